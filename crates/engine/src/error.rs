//! Errors as one line of text, for reasons that travel in records and responses.

/// `error` and its causes as one text, each said once: layers that repeat their cause in their
/// own message ("Failed to buffer the request body: X", then X again) are said once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    error_chain_skipping(error, |_| false)
}

/// [`error_chain`], leaving out the layers whose own text `skip` says is generic.
pub fn error_chain_skipping(
    error: &(dyn std::error::Error + 'static),
    skip: impl Fn(&str) -> bool,
) -> String {
    let mut texts: Vec<String> = Vec::new();
    let mut cause = Some(error);
    while let Some(e) = cause {
        texts.push(e.to_string());
        cause = e.source();
    }
    let mut parts: Vec<String> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let mut text = text.as_str();
        if let Some(next) = texts.get(i + 1) {
            text = text
                .strip_suffix(next.as_str())
                .and_then(|t| t.strip_suffix(": "))
                .unwrap_or(text);
        }
        let generic = text.is_empty() || skip(text);
        if !generic && parts.last().map(String::as_str) != Some(text) {
            parts.push(text.to_owned());
        }
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}
