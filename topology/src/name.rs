//! Interned names. Every entity, workload, group and destination the dataflow keys, arranges, joins
//! or reduces by is a [`Name`]: a 64-bit id (the name's hash) that all comparisons, orderings and
//! hashes use, and the name's text, shared by every record that holds it. Sorting and merging an
//! arrangement compares integers, not strings (`memcmp` was a third of the dataflow's time), and
//! cloning a record bumps a count instead of copying strings (the allocator was another third).
//!
//! The id is a function of the text alone, so every worker and every process of a cluster gives a
//! name the same id, routes it to the same worker and orders it the same way, and a restart gives
//! the same ids again; nothing needs to agree on a numbering. The text travels with the id (it is
//! what is serialised), so output is made without a look-up.
//!
//! Order is by id, not by text: wherever an order is shown to a person (an evidence sample, a
//! sorted list) use [`ByText`].

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many distinct names each thread's intern cache holds before it starts again. The cache
/// only saves allocations (a name's text is shared by the records that hold it, whether or not it
/// is cached), so a flood of spoofed names can cost it no more than this.
pub const INTERN_CACHE_CAPACITY: usize = 1 << 20;

/// The seed of the ids' hash. Changing it changes every id (and so worker routing and order), never
/// any output.
const SEED: u64 = 0x7065_6572_6772_6170; // "peergrap"

/// Names that hashed to the id of another name in a thread's cache (see [`collisions`]).
static COLLISIONS: AtomicU64 = AtomicU64::new(0);

/// An interned name: compared, ordered and hashed by its 64-bit id.
#[derive(Clone)]
pub struct Name {
    id: u64,
    text: Arc<str>,
}

thread_local! {
    static CACHE: RefCell<HashMap<u64, Name, IdHasherBuilder>> = RefCell::new(HashMap::default());
}

impl Name {
    /// The interned name of `text`. Repeated names on one thread share one allocation.
    pub fn new(text: &str) -> Name {
        let id = id_of(text);
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(name) = cache.get(&id) {
                if &*name.text == text {
                    return name.clone();
                }
                // Two texts with one id would be one name in every arrangement: count it, so that
                // it is seen (at 64 bits, about one pair in 10^7 among a million names).
                COLLISIONS.fetch_add(1, AtomicOrdering::Relaxed);
                return Name { id, text: text.into() };
            }
            if cache.len() >= INTERN_CACHE_CAPACITY {
                cache.clear();
            }
            let name = Name { id, text: text.into() };
            cache.insert(id, name.clone());
            name
        })
    }

    /// The interned name `prefix` + `rest` (e.g. `"pod:"` + `"shop/web-1"`), formatted into a
    /// reused buffer, so that a name already cached costs no allocation.
    pub fn joined(parts: &[&str]) -> Name {
        thread_local! {
            static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
        }
        BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            for part in parts {
                buffer.push_str(part);
            }
            Name::new(&buffer)
        })
    }

    /// A name that orders before every other (id 0, no text): where a seek in an arrangement
    /// starts.
    pub fn least() -> Name {
        Name { id: 0, text: "".into() }
    }

    /// The name's id: what it is compared, ordered and hashed by.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// How many times a name met another name's id in an intern cache, over the process's life. Two
/// such names are one name to the dataflow; the pipeline exports this as a metric.
pub fn collisions() -> u64 {
    COLLISIONS.load(AtomicOrdering::Relaxed)
}

/// The id of a name's text.
pub fn id_of(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), SEED)
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.id == other.id
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.id.cmp(&other.id)
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.id);
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::new(text)
    }
}

impl From<String> for Name {
    fn from(text: String) -> Name {
        Name::new(&text)
    }
}

impl From<&String> for Name {
    fn from(text: &String) -> Name {
        Name::new(text)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.text.as_ref().to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.text == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.text == **other
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Name, E> {
                Ok(Name::new(text))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A name ordered by its text, for what a person reads in order (evidence samples).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ByText(pub Name);

impl PartialOrd for ByText {
    fn partial_cmp(&self, other: &ByText) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByText {
    fn cmp(&self, other: &ByText) -> Ordering {
        // Equal ids are equal names; otherwise the texts decide.
        if self.0.id == other.0.id {
            Ordering::Equal
        } else {
            self.0.as_str().cmp(other.0.as_str()).then(self.0.id.cmp(&other.0.id))
        }
    }
}

/// The intern cache's keys are already hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

type IdHasherBuilder = std::hash::BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_are_equal_names_sharing_one_allocation() {
        let a = Name::new("pod:shop/web-1");
        let b = Name::joined(&["pod:", "shop/web-1"]);
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&a.text, &b.text), "the second name comes from the cache");
        assert_ne!(a, Name::new("pod:shop/web-2"));
        assert_eq!(a, "pod:shop/web-1");
        assert_eq!(a.to_string(), "pod:shop/web-1");
    }

    #[test]
    fn ids_depend_on_the_text_alone() {
        // The same on every thread (so on every worker and process), and stable: workers route by it.
        let here = Name::new("workload:shop/Deployment/web").id();
        let there = std::thread::spawn(|| Name::new("workload:shop/Deployment/web").id()).join().unwrap();
        assert_eq!(here, there);
        assert_eq!(here, id_of("workload:shop/Deployment/web"));
    }

    #[test]
    fn names_serialise_as_their_text() {
        let name = Name::new("ext:203.0.113.9");
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"ext:203.0.113.9\"");
        let back: Name = serde_json::from_str(&json).unwrap();
        assert_eq!((back.id(), back.as_str()), (name.id(), name.as_str()));
    }

    #[test]
    fn by_text_orders_by_text() {
        let mut names: Vec<ByText> =
            ["host:10.0.0.3", "host:10.0.0.1", "host:10.0.0.2"].into_iter().map(|t| ByText(Name::new(t))).collect();
        names.sort();
        let texts: Vec<&str> = names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(texts, ["host:10.0.0.1", "host:10.0.0.2", "host:10.0.0.3"]);
    }

    #[test]
    fn the_cache_is_bounded() {
        std::thread::spawn(|| {
            for n in 0..(INTERN_CACHE_CAPACITY + 10) {
                Name::joined(&["ext:", &n.to_string()]);
            }
            CACHE.with(|cache| assert!(cache.borrow().len() <= INTERN_CACHE_CAPACITY));
        })
        .join()
        .unwrap();
    }
}
