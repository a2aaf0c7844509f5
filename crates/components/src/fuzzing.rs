//! Harnesses for the fuzz targets of the components' parsers (`fuzz/fuzz_targets/`), callable
//! from plain tests too (`tests/fuzz_regressions.rs` replays the committed corpus). Each panics
//! when an invariant breaks.

use clickpulse_engine::event;

use crate::sources::postgres::PostgresConfig;
use crate::sources::postgres::config::{SHOP_MAPPING, parse_table};
use crate::sources::postgres::mapping::Mapper;
use crate::sources::postgres::pgoutput;

/// `data` as one transaction of the replication stream: pgoutput messages, each preceded by
/// its length (two bytes, big-endian). Every message decodes or fails with a reason; every
/// change of a described table becomes a valid event, a dead letter with a reason, or is
/// counted as ignored. Returns the number of events.
pub fn fuzz_pgoutput(data: &[u8]) -> usize {
    let config: PostgresConfig =
        parse_table(&format!("[postgres]\ndatabase = \"shop\"\n{SHOP_MAPPING}"))
            .expect("the shop mapping parses");
    assert!(config.problems().is_empty());
    let mut mapper = Mapper::new(&config);
    let mut txn = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (message, tail) = rest[2..].split_at(len);
        rest = tail;
        match pgoutput::decode(message) {
            Ok(m) => {
                mapper.message(m, &mut txn);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let mapped = mapper.transaction(&txn, 1_700_000_000_000, 42);
    for click in &mapped.clicks {
        assert!(
            !click.visitor.is_empty(),
            "an event without a visitor: {click:?}"
        );
        event::validate(&click.event, click.detail.as_deref())
            .unwrap_or_else(|e| panic!("an invalid event came out: {e}: {click:?}"));
    }
    for letter in &mapped.dead_letters {
        assert!(!letter.reason.is_empty());
        assert!(letter.source.starts_with("postgres:"));
    }
    // Every change is accounted for: each becomes events, dead letters or ignored (a change may
    // become one event per mapping, and lines attach to their purchase).
    let accounted = mapped.clicks.len() + mapped.dead_letters.len() + mapped.ignored as usize;
    assert!(
        txn.is_empty() || accounted > 0,
        "{} changes vanished",
        txn.len()
    );
    mapped.clicks.len()
}
