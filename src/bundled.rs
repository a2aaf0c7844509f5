//! The real data shipped inside the binary (see `data/README.md` for sources and licences), so
//! `clickpulse demo` works from any directory without a checkout.

/// The acme.com Omniture log, parts 1 and 4 (TSV, Zstandard-compressed).
pub(crate) const LOGS: [(&str, &[u8]); 2] = [
    (
        "Omniture.1.tsv.zst",
        include_bytes!("../data/omniture/Omniture.1.tsv.zst"),
    ),
    (
        "Omniture.4.tsv.zst",
        include_bytes!("../data/omniture/Omniture.4.tsv.zst"),
    ),
];

/// Visitor demographics, gzipped JSON lines.
pub(crate) const USERS_JSON_GZ: &[u8] = include_bytes!("../data/users.json.gz");
/// The product catalogue.
pub(crate) const PRODUCTS_JSON: &[u8] = include_bytes!("../data/products.json");
/// The original URL → category table.
pub(crate) const PRODUCTS_TSV: &[u8] = include_bytes!("../data/products.tsv");

/// The seed behaviour patterns (copied into a new data dir's `patterns/` folder).
pub(crate) const PATTERNS: [(&str, &str); 4] = [
    (
        "seed-clothes-shoes-clothes.toml",
        include_str!("../patterns/seed-clothes-shoes-clothes.toml"),
    ),
    (
        "seed-5-step.toml",
        include_str!("../patterns/seed-5-step.toml"),
    ),
    (
        "cart-abandonment.toml",
        include_str!("../patterns/cart-abandonment.toml"),
    ),
    (
        "browse-abandonment.toml",
        include_str!("../patterns/browse-abandonment.toml"),
    ),
];
