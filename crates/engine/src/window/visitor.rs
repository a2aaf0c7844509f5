//! Visitor ids as the window state holds them: hashed once, shared, compared by pointer.
//!
//! Every view enters up to six visitor sets and counters (the minute and 30-minute buckets, two
//! sliding windows with an add and a remove each). Keyed by the id string, each of those hashed
//! the 36-byte id again and compared it byte by byte on a hit: a third of the aggregation's
//! time. A [`Visitor`] is one pointer to the id and its hash, computed once when the view
//! arrives. The [`VisitorInterner`] hands out one shared [`Visitor`] per distinct id, so a hit
//! compares pointers; a [`Visitor`] that was not interned (one read back from a checkpoint)
//! still compares equal by its string, only slower.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

struct Name {
    hash: u64,
    id: Box<str>,
}

/// A visitor id with its hash; cloning shares it.
#[derive(Clone)]
pub struct Visitor(Arc<Name>);

/// One hasher for every [`Visitor`] of the process (seeded at random, so ids a client chooses
/// cannot be made to collide on purpose).
fn hasher() -> &'static ahash::RandomState {
    static HASHER: OnceLock<ahash::RandomState> = OnceLock::new();
    HASHER.get_or_init(ahash::RandomState::new)
}

fn hash_of(id: &str) -> u64 {
    hasher().hash_one(id)
}

impl Visitor {
    /// A visitor id, hashed but not shared with any other (see [`VisitorInterner::get`]).
    pub fn new(id: &str) -> Self {
        Visitor(Arc::new(Name {
            hash: hash_of(id),
            id: id.into(),
        }))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0.id
    }
}

impl PartialEq for Visitor {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.id == other.0.id)
    }
}

impl Eq for Visitor {}

impl Hash for Visitor {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for Visitor {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Visitor {
    /// By id, as the strings order.
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return Ordering::Equal;
        }
        self.0.id.cmp(&other.0.id)
    }
}

impl fmt::Debug for Visitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Visitor {
    /// As the plain id string: checkpoints do not change with this representation.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Visitor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Visitor::new(&id))
    }
}

/// One shared [`Visitor`] per distinct id in use. Ids no window holds any more are dropped by
/// [`VisitorInterner::sweep`], which runs by itself when the table has doubled since the last
/// sweep, so the table stays within twice the visitors in the window state.
#[derive(Default)]
pub struct VisitorInterner {
    table: hashbrown::HashTable<Visitor>,
    live_after_sweep: usize,
}

/// The table never sweeps below this many entries (a sweep visits every entry).
const MIN_SWEEP: usize = 4_096;

impl VisitorInterner {
    /// The shared [`Visitor`] for `id`.
    pub fn get(&mut self, id: &str) -> Visitor {
        let hash = hash_of(id);
        if let Some(v) = self.table.find(hash, |v| &*v.0.id == id) {
            return v.clone();
        }
        if self.table.len() >= (2 * self.live_after_sweep).max(MIN_SWEEP) {
            self.sweep();
        }
        let v = Visitor(Arc::new(Name {
            hash,
            id: id.into(),
        }));
        self.table.insert_unique(hash, v.clone(), |v| v.0.hash);
        v
    }

    /// Shares `v` if its id is interned, else interns it: for visitors read back from a
    /// checkpoint.
    pub fn share(&mut self, v: &Visitor) -> Visitor {
        if let Some(found) = self.table.find(v.0.hash, |x| x == v) {
            return found.clone();
        }
        self.table.insert_unique(v.0.hash, v.clone(), |v| v.0.hash);
        v.clone()
    }

    /// Drops every id that only the table still holds.
    pub fn sweep(&mut self) {
        self.table.retain(|v| Arc::strong_count(&v.0) > 1);
        self.live_after_sweep = self.table.len();
    }

    /// Ids in the table (some may be held by nothing but the table until the next sweep).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// One shared `Arc<str>` per distinct text (product ids, categories, titles, countries), for
/// views decoded from a topic: each arrives with its own copies, and the window state compares
/// these texts in linear scans (a pane's product counts) that a shared pointer settles at once.
/// Unshared, those compares are a large part of the live aggregate stage (`memcmp`). Texts nothing
/// else holds are swept like [`VisitorInterner`]'s ids, so ids made up by clients cannot grow
/// the table without bound.
#[derive(Default)]
pub struct TextInterner {
    table: hashbrown::HashTable<Arc<str>>,
    live_after_sweep: usize,
}

impl TextInterner {
    /// Replaces `text` with the shared copy of its value (making it the shared copy if it is
    /// the first).
    pub fn share(&mut self, text: &mut Arc<str>) {
        let hash = hash_of(text);
        if let Some(shared) = self.table.find(hash, |t| **t == **text) {
            if !Arc::ptr_eq(shared, text) {
                *text = shared.clone();
            }
            return;
        }
        if self.table.len() >= (2 * self.live_after_sweep).max(MIN_SWEEP) {
            self.sweep();
        }
        self.table.insert_unique(hash, text.clone(), |t| hash_of(t));
    }

    /// Drops every text that only the table still holds.
    pub fn sweep(&mut self) {
        self.table.retain(|t| Arc::strong_count(t) > 1);
        self.live_after_sweep = self.table.len();
    }

    /// Texts in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_texts_point_at_one_copy_and_unused_ones_are_swept() {
        let mut texts = TextInterner::default();
        let mut a: Arc<str> = Arc::from("shoes");
        let mut a2: Arc<str> = Arc::from("shoes");
        texts.share(&mut a);
        texts.share(&mut a2);
        assert!(Arc::ptr_eq(&a, &a2));
        let mut b: Arc<str> = Arc::from("clothing");
        texts.share(&mut b);
        assert_eq!(&*b, "clothing");
        assert_eq!(texts.len(), 2);
        drop(b);
        texts.sweep();
        assert_eq!(texts.len(), 1, "only what a view still holds stays");
        let mut a3: Arc<str> = Arc::from("shoes");
        texts.share(&mut a3);
        assert!(Arc::ptr_eq(&a, &a3));
    }

    #[test]
    fn the_text_table_stays_within_twice_what_is_held() {
        let mut texts = TextInterner::default();
        for i in 0..100_000 {
            let mut t: Arc<str> = Arc::from(format!("product-{i}"));
            texts.share(&mut t);
        }
        assert!(texts.len() <= 2 * MIN_SWEEP, "{} texts kept", texts.len());
    }

    #[test]
    fn interned_ids_share_one_allocation_and_compare_like_strings() {
        let mut interner = VisitorInterner::default();
        let a = interner.get("A");
        let a2 = interner.get("A");
        assert!(Arc::ptr_eq(&a.0, &a2.0));
        let b = interner.get("B");
        assert_ne!(a, b);
        assert!(a < b);
        // Not interned (as read from a checkpoint): still equal, same hash, same order.
        let a3 = Visitor::new("A");
        assert_eq!(a, a3);
        assert_eq!(hasher().hash_one(&a), hasher().hash_one(&a3));
        assert_eq!(a.cmp(&a3), Ordering::Equal);
        assert!(Arc::ptr_eq(&interner.share(&a3).0, &a.0));
    }

    #[test]
    fn serializes_as_the_plain_id() {
        let v = Visitor::new("ABC");
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, "\"ABC\"");
        let back: Visitor = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(bytes, postcard::to_allocvec("ABC").unwrap());
    }

    #[test]
    fn a_sweep_drops_only_ids_nothing_else_holds() {
        let mut interner = VisitorInterner::default();
        let kept = interner.get("kept");
        drop(interner.get("dropped"));
        assert_eq!(interner.len(), 2);
        interner.sweep();
        assert_eq!(interner.len(), 1);
        assert!(Arc::ptr_eq(&interner.get("kept").0, &kept.0));
    }

    #[test]
    fn the_table_sweeps_itself_as_it_grows() {
        let mut interner = VisitorInterner::default();
        for i in 0..100_000 {
            drop(interner.get(&format!("v{i}")));
        }
        assert!(interner.len() <= MIN_SWEEP, "{}", interner.len());
    }
}
