//! `clickpulse webhooks`: a new signing secret, and replaying the dead letters through the
//! running webhooks stage (`POST /api/webhooks/replay` of the process that runs it).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clickpulse_components::sinks::webhook::signature::Secret;
use clickpulse_server::webhooks::{ReplayFilter, ReplayReport};

use crate::cli::{WebhooksReplayArgs, WebhooksSecretArgs};

/// Prints a new `whsec_` secret.
pub(crate) fn secret(_args: WebhooksSecretArgs) -> Result<ExitCode> {
    println!("{}", Secret::generate().to_text());
    Ok(ExitCode::SUCCESS)
}

/// Asks the process running the webhooks stage to send its dead letters again.
pub(crate) fn replay(args: WebhooksReplayArgs) -> Result<ExitCode> {
    let config = crate::config::load(&args.config)?;
    let url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{}", config.web.listen),
    };
    let token = match config.web.admin_token.clone().filter(|t| !t.is_empty()) {
        Some(token) => token,
        None => {
            let path =
                crate::inputs::data_dir(config.embedded.data_dir.clone()).join("admin-token");
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "no admin token given (--admin-token, CLICKPULSE_ADMIN_TOKEN) and none in {}",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let filter = ReplayFilter {
        endpoint: args.endpoint.clone(),
        id: args.id.clone(),
        enable: args.enable,
    };
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut response = agent
        .post(format!("{url}/api/webhooks/replay"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(serde_json::to_string(&filter)?)
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        bail!("{url} answered {status}: {message}");
    }
    let report: ReplayReport =
        serde_json::from_str(&body).with_context(|| format!("{url} answered {body:?}"))?;
    for name in &report.enabled {
        println!("re-enabled endpoint {name}");
    }
    println!(
        "re-queued {} deliveries; {} dead letters left",
        report.requeued, report.dead_letters_left
    );
    Ok(ExitCode::SUCCESS)
}
