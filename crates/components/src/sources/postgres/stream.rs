//! The replication stream both runtimes read: connect, make sure the slot and the publication
//! exist, start at the last committed position, and hand each committed transaction's events to
//! the runtime's `commit`; only once `commit` returned does the slot's confirmed position move
//! past it. A transaction at or before the committed position (the server resends from the slot's
//! position) is skipped: de-duplication by commit position.
//!
//! Between transactions, a keepalive's WAL position is confirmed too: everything before it has
//! been received and committed, and without it a publication whose tables are quiet would keep
//! the server's WAL for ever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use tracing::{info, warn};

use super::config::{PostgresConfig, qualified};
use super::mapping::{Change, Mapped, Mapper};
use super::pgoutput;
use clickpulse_engine::error_chain;
use clickpulse_engine::reader::DeadLetter;

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server or the connection failed.
    #[error("PostgreSQL replication failed")]
    Replication(#[from] PgWireError),
    /// The slot or the publication is not there and may not be created, or cannot be.
    #[error("{0}")]
    Setup(String),
}

/// A committed transaction, to be mapped to events and committed by the runtime.
pub struct Committed<'a> {
    mapper: &'a Mapper,
    changes: &'a [Change],
    letters: &'a mut Vec<DeadLetter>,
    ignored: u64,
    commit_lsn: u64,
    /// The position after its commit record: the source's position once it is committed.
    pub end_lsn: u64,
}

impl Committed<'_> {
    /// Its events (stamped `now_ms` where a mapping names no time column), dead letters and
    /// ignored changes.
    pub fn map(self, now_ms: i64) -> Mapped {
        let mut mapped = self
            .mapper
            .transaction(self.changes, now_ms, self.commit_lsn);
        mapped.dead_letters.append(self.letters);
        mapped.ignored += self.ignored;
        mapped
    }
}

/// The connection's settings.
pub(crate) fn replication_config(config: &PostgresConfig, start: u64) -> ReplicationConfig {
    let password = config
        .password_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
        .unwrap_or_default();
    let cfg = if config.host.starts_with('/') {
        ReplicationConfig::unix(
            &config.host,
            config.port,
            &config.user,
            password,
            &config.database,
            &config.slot,
            config.publication.as_str(),
        )
    } else {
        ReplicationConfig::new(
            &config.host,
            &config.user,
            password,
            &config.database,
            &config.slot,
            config.publication.as_str(),
        )
        .with_port(config.port)
    };
    cfg.with_start_lsn(Lsn::from_u64(start))
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_millis(200))
        .with_application_name("clickpulse")
}

/// The first column of a query's first row, as text.
fn first<B: AsRef<[u8]>>(rows: &[Vec<Option<B>>]) -> Option<String> {
    rows.first()
        .and_then(|r| r.first())
        .and_then(Option::as_ref)
        .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
}

/// Makes sure the slot and the publication exist (creating them where `create` allows), on the
/// gated session before the stream starts. Returns the slot's confirmed position.
async fn prepare(
    client: &mut ReplicationClient,
    config: &PostgresConfig,
) -> Result<u64, StreamError> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let publication = client
        .simple_query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            quote(&config.publication)
        ))
        .await?;
    if publication.is_empty() {
        if !config.create {
            return Err(StreamError::Setup(format!(
                "the publication {:?} does not exist (create it, or set [postgres] create = true)",
                config.publication
            )));
        }
        let mut tables: Vec<String> = config.tables.iter().map(|t| qualified(&t.name)).collect();
        tables.sort();
        tables.dedup();
        let list = tables
            .iter()
            .map(|t| {
                t.split('.')
                    .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect::<Vec<_>>()
            .join(", ");
        client
            .simple_query(&format!(
                "CREATE PUBLICATION {} FOR TABLE {list}",
                config.publication
            ))
            .await
            .map_err(|e| StreamError::Setup(format!("cannot create the publication: {e}")))?;
        info!(publication = %config.publication, tables = %list, "Created the publication.");
    }
    let slot = client
        .simple_query(&format!(
            "SELECT confirmed_flush_lsn::text, plugin FROM pg_replication_slots WHERE slot_name = {}",
            quote(&config.slot)
        ))
        .await?;
    if slot.is_empty() {
        if !config.create {
            return Err(StreamError::Setup(format!(
                "the replication slot {:?} does not exist (create it, or set [postgres] create = \
                 true)",
                config.slot
            )));
        }
        let created = client
            .simple_query(&format!(
                "SELECT lsn::text FROM pg_create_logical_replication_slot({}, 'pgoutput')",
                quote(&config.slot)
            ))
            .await
            .map_err(|e| StreamError::Setup(format!("cannot create the replication slot: {e}")))?;
        let lsn = first(&created)
            .and_then(|l| Lsn::parse(&l).ok())
            .map_or(0, Lsn::as_u64);
        info!(slot = %config.slot, lsn = %Lsn::from_u64(lsn), "Created the replication slot.");
        return Ok(lsn);
    }
    if let Some(Some(plugin)) = slot[0].get(1)
        && plugin.as_ref() != b"pgoutput"
    {
        return Err(StreamError::Setup(format!(
            "the replication slot {:?} uses the plugin {:?}, not pgoutput",
            config.slot,
            String::from_utf8_lossy(plugin)
        )));
    }
    Ok(first(&slot)
        .and_then(|l| Lsn::parse(&l).ok())
        .map_or(0, Lsn::as_u64))
}

/// Follows the slot from `committed` (the position after the last transaction committed, 0
/// before the first) until `shutdown`, calling `commit` with each new transaction. Reconnects
/// after a failure of the connection (with a growing pause); returns when `commit` fails or the
/// setup cannot be done.
pub(crate) fn follow<E>(
    config: &PostgresConfig,
    mut committed: u64,
    shutdown: &AtomicBool,
    mut on_error: impl FnMut(&StreamError),
    mut commit: impl FnMut(Committed<'_>) -> Result<(), E>,
) -> Result<(), Followed<E>> {
    // A worker thread for the replication client's connection task: `commit` blocks (a disk
    // commit, the brokers' acknowledgements) while the client keeps answering the server.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| {
            Followed::Stream(StreamError::Setup(format!("cannot start a runtime: {e}")))
        })?;
    let mut mapper = Mapper::new(config);
    let mut pause = Duration::from_millis(200);
    while !shutdown.load(Ordering::Relaxed) {
        let before = committed;
        let outcome = runtime.block_on(session(
            config,
            &mut committed,
            &mut mapper,
            shutdown,
            &mut commit,
        ));
        match outcome {
            Ok(()) if shutdown.load(Ordering::Relaxed) => return Ok(()),
            Ok(()) => {}
            Err(Followed::Stream(StreamError::Replication(error))) => {
                if committed > before {
                    // The session had worked: a new failure starts the pauses over.
                    pause = Duration::from_millis(200);
                }
                let error = StreamError::Replication(error);
                on_error(&error);
                warn!(error = %error_chain(&error), retry_in_ms = pause.as_millis() as u64, "PostgreSQL replication failed; reconnecting.");
                let until = std::time::Instant::now() + pause;
                while std::time::Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// The longest a connection may take to be set up and the stream to start.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest the stream may stay silent: the server sends a keepalive after half its
/// `wal_sender_timeout` (60 s by default) of quiet, so longer means the connection is gone.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(90);

fn timed_out<E>(what: &str) -> Followed<E> {
    PgWireError::Internal(format!("timed out: {what}")).into()
}

/// Why [`follow`] returned.
#[derive(Debug)]
pub enum Followed<E> {
    /// The stream could not be set up.
    Stream(StreamError),
    /// The runtime's commit failed.
    Commit(E),
}

impl<E> From<PgWireError> for Followed<E> {
    fn from(e: PgWireError) -> Self {
        Followed::Stream(StreamError::Replication(e))
    }
}

async fn session<E>(
    config: &PostgresConfig,
    committed: &mut u64,
    mapper: &mut Mapper,
    shutdown: &AtomicBool,
    commit: &mut impl FnMut(Committed<'_>) -> Result<(), E>,
) -> Result<(), Followed<E>> {
    // Setting up is bounded: a server that accepted the connection and never answers (one
    // going down or coming up) is tried again rather than waited for.
    let setup = async {
        let mut client =
            ReplicationClient::connect_gated(replication_config(config, *committed)).await?;
        let confirmed = prepare(&mut client, config)
            .await
            .map_err(Followed::Stream)?;
        Ok::<_, Followed<E>>((client, confirmed))
    };
    let (mut client, confirmed) = tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| timed_out("connecting and preparing the slot"))??;
    if *committed != 0 && confirmed > *committed {
        warn!(slot = %config.slot, confirmed = %Lsn::from_u64(confirmed), committed = %Lsn::from_u64(*committed),
            "The slot is past Clickpulse's own position: something else consumed it, and the transactions in between are not read.");
    }
    client.start().await?;
    tokio::time::timeout(SETUP_TIMEOUT, client.wait_started())
        .await
        .map_err(|_| timed_out("starting the replication stream"))??;
    mapper.reconnected();
    info!(slot = %config.slot, from = %Lsn::from_u64((*committed).max(confirmed)), "PostgreSQL replication started.");
    let mut txn: Vec<Change> = Vec::new();
    let mut letters: Vec<DeadLetter> = Vec::new();
    let mut ignored = 0u64;
    let mut in_txn = false;
    let mut final_lsn = 0u64;
    let mut heard = std::time::Instant::now();
    loop {
        if shutdown.load(Ordering::Relaxed) {
            client.stop();
            return Ok(());
        }
        let event = match tokio::time::timeout(Duration::from_millis(200), client.recv()).await {
            Err(_) if heard.elapsed() > SILENCE_TIMEOUT => {
                return Err(timed_out("the stream: no message or keepalive"));
            }
            Err(_) => continue,
            Ok(event) => event?,
        };
        heard = std::time::Instant::now();
        let Some(event) = event else {
            // The server ended the stream without being asked to: reconnect.
            return Err(
                PgWireError::Internal("the server ended the replication stream".into()).into(),
            );
        };
        match event {
            ReplicationEvent::Begin { final_lsn: lsn, .. } => {
                in_txn = true;
                final_lsn = lsn.as_u64();
                txn.clear();
                letters.clear();
                ignored = 0;
            }
            ReplicationEvent::XLogData { data, .. } => match pgoutput::decode(&data) {
                Ok(message) => ignored += mapper.message(message, &mut txn),
                Err(error) => letters.push(DeadLetter::new(
                    &format!("postgres:{}", config.slot),
                    final_lsn,
                    error.to_string(),
                    &data,
                )),
            },
            ReplicationEvent::Commit { end_lsn, .. } => {
                in_txn = false;
                let end_lsn = end_lsn.as_u64();
                if end_lsn <= *committed {
                    // Resent from before the committed position: already in the topics.
                    continue;
                }
                commit(Committed {
                    mapper,
                    changes: &txn,
                    letters: &mut letters,
                    ignored,
                    commit_lsn: final_lsn,
                    end_lsn,
                })
                .map_err(Followed::Commit)?;
                *committed = end_lsn;
                client.update_applied_lsn(Lsn::from_u64(end_lsn));
            }
            ReplicationEvent::KeepAlive { wal_end, .. } if !in_txn => {
                client.update_applied_lsn(wal_end);
            }
            _ => {}
        }
    }
}
