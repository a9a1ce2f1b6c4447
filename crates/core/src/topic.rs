//! The topic exchange's trie: binding patterns of dot-separated words where
//! `*` matches exactly one word and `#` zero or more. Words may be empty
//! (`a..b` has three words); the empty routing key has no words, as in
//! RabbitMQ's `rabbit_exchange_type_topic`.

use std::hash::Hash;

use crate::{FastMap as HashMap, FastSet as HashSet};

/// Splits a key or pattern into words; "" has none.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// How many words `key` has (without splitting it): what the
/// `max_topic_levels` limit counts.
pub fn word_count(key: &str) -> usize {
    if key.is_empty() {
        0
    } else {
        key.bytes().filter(|&b| b == b'.').count() + 1
    }
}

/// `#.#` matches exactly what `#` matches; collapsing repeats keeps matching linear.
fn normalise<'a>(pattern: &'a str) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = Vec::new();
    for w in words(pattern) {
        if w == "#" && out.last() == Some(&"#") {
            continue;
        }
        out.push(w);
    }
    out
}

/// Does `key` match `pattern`? (Used where no trie is kept, e.g. retained
/// messages.) Walks the key one word at a time over the set of pattern
/// positions matched so far: O(key words x live positions), where only a
/// `#` keeps a position live beyond one word, whatever the pattern; no
/// recursion.
pub fn matches(pattern: &str, key: &str) -> bool {
    let p = normalise(pattern);
    // The first j pattern words match the key words read so far, for each
    // j in `live` (sorted, no repeats).
    let mut live = vec![0];
    close_over_hashes(&p, &mut live);
    for w in words(key) {
        let mut next = Vec::with_capacity(live.len() + 1);
        for &j in &live {
            match p.get(j) {
                // `#` eats this word and stays, or eats it and ends.
                Some(&"#") => next.extend([j, j + 1]),
                Some(&"*") => next.push(j + 1),
                Some(lit) if *lit == w => next.push(j + 1),
                _ => {}
            }
        }
        next.sort_unstable();
        next.dedup();
        close_over_hashes(&p, &mut next);
        if next.is_empty() {
            return false;
        }
        live = next;
    }
    live.contains(&p.len())
}

/// A `#` may match zero words: wherever it is live, so is what follows it.
/// (Normalised patterns have no `#.#`, so one step is enough.)
fn close_over_hashes(p: &[&str], live: &mut Vec<usize>) {
    let skips: Vec<usize> = live
        .iter()
        .filter(|&&j| p.get(j) == Some(&"#"))
        .map(|&j| j + 1)
        .collect();
    if !skips.is_empty() {
        live.extend(skips);
        live.sort_unstable();
        live.dedup();
    }
}

/// A trie from binding patterns to the values bound with them.
///
/// Matching walks the key one word at a time over the set of trie nodes
/// reached so far (each node at most once per word), so its cost is
/// O(key words x matching nodes) whatever the patterns; insert and remove
/// are O(pattern words). Nothing here recurses, so a pattern or key of any
/// length cannot exhaust the stack.
#[derive(Debug)]
pub struct TopicTrie<V> {
    root: Node<V>,
}

/// Past this many entries a node's children (or values) move from a
/// scanned vector to a hash map.
const SMALL_LIMIT: usize = 8;

/// A map that is one entry held inline, then a vector while small: most
/// trie nodes have one child or one value, and a hash map's smallest table
/// (four buckets of key and node) cost several hundred bytes each, for
/// every subscription. The large form is boxed, so the map is a vector's
/// size in every node: a node with ten thousand leaf children (one
/// client's subscriptions under one prefix) holds each leaf in a table
/// slot, free slots included, and a leaf's one value costs no allocation.
#[derive(Debug)]
enum SmallMap<K, T> {
    One(K, T),
    Few(Vec<(K, T)>),
    Many(Box<HashMap<K, T>>),
}

impl<K, T> Default for SmallMap<K, T> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K, T> SmallMap<K, T> {
    fn len(&self) -> usize {
        match self {
            SmallMap::One(..) => 1,
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every entry's value out, leaving the map empty.
    fn take_values(&mut self) -> Vec<T> {
        match std::mem::take(self) {
            SmallMap::One(_, t) => vec![t],
            SmallMap::Few(v) => v.into_iter().map(|(_, t)| t).collect(),
            SmallMap::Many(m) => m.into_values().collect(),
        }
    }
}

impl<K: Eq + Hash, T> SmallMap<K, T> {
    fn get<Q>(&self, k: &Q) -> Option<&T>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::One(key, t) => (key.borrow() == k).then_some(t),
            SmallMap::Few(v) => v.iter().find(|(key, _)| key.borrow() == k).map(|(_, t)| t),
            SmallMap::Many(m) => m.get(k),
        }
    }

    fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut T>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::One(key, t) => (K::borrow(key) == k).then_some(t),
            SmallMap::Few(v) => v
                .iter_mut()
                .find(|(key, _)| key.borrow() == k)
                .map(|(_, t)| t),
            SmallMap::Many(m) => m.get_mut(k),
        }
    }

    /// The entry for `k`, made with `make` if absent.
    fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> T) -> &mut T {
        let was_one = match self {
            SmallMap::Few(v) if v.is_empty() => {
                *self = SmallMap::One(k, make());
                let SmallMap::One(_, t) = self else {
                    unreachable!("set above");
                };
                return t;
            }
            SmallMap::One(key, _) => *key != k,
            SmallMap::Few(v) => {
                if v.len() >= SMALL_LIMIT && !v.iter().any(|(key, _)| *key == k) {
                    let m: HashMap<K, T> = std::mem::take(v).into_iter().collect();
                    *self = SmallMap::Many(Box::new(m));
                }
                false
            }
            SmallMap::Many(_) => false,
        };
        if was_one {
            // A second entry: both go to a vector of exactly two.
            let SmallMap::One(key, t) = std::mem::take(self) else {
                unreachable!("matched above");
            };
            *self = SmallMap::Few(Vec::with_capacity(2));
            if let SmallMap::Few(v) = self {
                v.push((key, t));
            }
        }
        match self {
            SmallMap::One(_, t) => t,
            SmallMap::Few(v) => {
                let i = match v.iter().position(|(key, _)| *key == k) {
                    Some(i) => i,
                    None => {
                        // One slot at a time: a push would otherwise
                        // double the room, and most nodes hold few.
                        v.reserve_exact(1);
                        v.push((k, make()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            SmallMap::Many(m) => m.entry(k).or_insert_with(make),
        }
    }

    fn remove<Q>(&mut self, k: &Q) -> Option<T>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::One(key, _) => {
                if K::borrow(key) != k {
                    return None;
                }
                match std::mem::take(self) {
                    SmallMap::One(_, t) => Some(t),
                    _ => unreachable!("matched above"),
                }
            }
            SmallMap::Few(v) => {
                let i = v.iter().position(|(key, _)| key.borrow() == k)?;
                let (_, t) = v.swap_remove(i);
                if v.is_empty() {
                    // Give the allocation back.
                    *v = Vec::new();
                }
                Some(t)
            }
            SmallMap::Many(m) => m.remove(k),
        }
    }

    /// Appends a reference to every key to `out` (routing: no allocation
    /// beyond `out`'s).
    fn keys_into<'a>(&'a self, out: &mut Vec<&'a K>) {
        match self {
            SmallMap::One(k, _) => out.push(k),
            SmallMap::Few(v) => out.extend(v.iter().map(|(k, _)| k)),
            SmallMap::Many(m) => out.extend(m.keys()),
        }
    }
}

/// A node's children: none for a leaf (most nodes are one: each
/// subscription's last word), otherwise a boxed map, so that a leaf is
/// small where its parent's table holds it.
#[derive(Debug)]
struct Kids<V>(Option<Box<SmallMap<Box<str>, Node<V>>>>);

impl<V> Kids<V> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Takes every child out, leaving none.
    fn take_values(&mut self) -> Vec<Node<V>> {
        self.0.take().map_or_else(Vec::new, |mut m| m.take_values())
    }

    fn get(&self, word: &str) -> Option<&Node<V>> {
        self.0.as_ref()?.get(word)
    }

    fn get_mut(&mut self, word: &str) -> Option<&mut Node<V>> {
        self.0.as_mut()?.get_mut(word)
    }

    fn contains_key(&self, word: &str) -> bool {
        self.get(word).is_some()
    }

    fn get_or_insert_with(
        &mut self,
        word: Box<str>,
        make: impl FnOnce() -> Node<V>,
    ) -> &mut Node<V> {
        self.0
            .get_or_insert_with(Box::default)
            .get_or_insert_with(word, make)
    }

    fn remove(&mut self, word: &str) -> Option<Node<V>> {
        let map = self.0.as_mut()?;
        let node = map.remove(word);
        if map.is_empty() {
            self.0 = None;
        }
        node
    }
}

#[derive(Debug)]
struct Node<V> {
    children: Kids<V>,
    /// Values bound with a pattern ending at this node, with how many
    /// bindings hold each (the same pair may be bound with different
    /// arguments; each needs its own remove).
    values: SmallMap<V, u32>,
    /// Reached through a `#` word: it may go on matching any number of
    /// further words.
    is_hash: bool,
}

impl<V> Node<V> {
    fn new(is_hash: bool) -> Self {
        Node {
            children: Kids(None),
            values: SmallMap::default(),
            is_hash,
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.children.is_empty()
    }
}

/// Drops a subtree without recursing (a chain of nodes dropped by the
/// default drop glue would recurse once per level).
fn drop_iteratively<V>(node: Node<V>) {
    let mut stack = vec![node];
    while let Some(mut n) = stack.pop() {
        stack.extend(n.children.take_values());
    }
}

impl<V> Drop for TopicTrie<V> {
    fn drop(&mut self) {
        for c in self.root.children.take_values() {
            drop_iteratively(c);
        }
    }
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::new(false),
        }
    }
}

/// The nodes reached after some number of key words, each once. Small
/// sets (the usual case) are checked by a scan; large ones get a hash set.
struct States<'a, V> {
    list: Vec<&'a Node<V>>,
    index: Option<HashSet<*const Node<V>>>,
}

/// Past this many states a hash set replaces the linear scan.
const STATES_SCAN_LIMIT: usize = 16;

impl<'a, V> States<'a, V> {
    fn new() -> Self {
        States {
            list: Vec::new(),
            index: None,
        }
    }

    /// Empties the set, keeping the list's allocation for the next word.
    fn clear(&mut self) {
        self.list.clear();
        self.index = None;
    }

    /// Adds `node`, and (since `#` may match zero words) its `#` child.
    fn add(&mut self, node: &'a Node<V>) {
        let mut next = Some(node);
        while let Some(n) = next.take() {
            if !self.insert(n) {
                return;
            }
            next = n.children.get("#");
        }
    }

    fn insert(&mut self, node: &'a Node<V>) -> bool {
        let ptr: *const Node<V> = node;
        if let Some(index) = &mut self.index {
            if !index.insert(ptr) {
                return false;
            }
        } else if self.list.iter().any(|n| std::ptr::eq(*n, node)) {
            return false;
        } else if self.list.len() >= STATES_SCAN_LIMIT {
            let mut index: HashSet<*const Node<V>> =
                self.list.iter().map(|n| *n as *const Node<V>).collect();
            index.insert(ptr);
            self.index = Some(index);
        }
        self.list.push(node);
        true
    }
}

impl<V: Clone + Eq + Hash> TopicTrie<V> {
    /// Binds `value` with `pattern`. The same pair may be bound more than once
    /// (two bindings differing only in arguments); each needs its own remove.
    pub fn insert(&mut self, pattern: &str, value: V) {
        let mut node = &mut self.root;
        for w in normalise(pattern) {
            node = node
                .children
                .get_or_insert_with(w.into(), || Node::new(w == "#"));
        }
        *node.values.get_or_insert_with(value, || 0) += 1;
    }

    /// Removes one binding of the pair; returns whether there was one. Empty
    /// branches are pruned.
    pub fn remove<Q>(&mut self, pattern: &str, value: &Q) -> bool
    where
        V: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let path = normalise(pattern);
        // Find the value, and the shallowest node from which everything
        // below on the path would be left empty (to be pruned).
        let mut node = &self.root;
        let mut prune_from: Option<usize> = None;
        for (depth, w) in path.iter().enumerate() {
            let Some(child) = node.children.get(w) else {
                return false;
            };
            // `child` is only kept alive by this path if it holds nothing
            // else: no values and no other children.
            let lone =
                child.children.len() <= 1 && (depth + 1 == path.len() || child.values.is_empty());
            if !lone || (depth + 1 < path.len() && !child.children.contains_key(path[depth + 1])) {
                prune_from = None;
            } else if prune_from.is_none() {
                prune_from = Some(depth);
            }
            node = child;
        }
        let Some(count) = node.values.get(value).copied() else {
            return false;
        };
        let leaf_empties = count == 1 && node.values.len() == 1 && node.children.is_empty();
        let mut node = &mut self.root;
        for (depth, w) in path.iter().enumerate() {
            if leaf_empties && prune_from == Some(depth) {
                if let Some(subtree) = node.children.remove(w) {
                    drop_iteratively(subtree);
                }
                return true;
            }
            let Some(child) = node.children.get_mut(w) else {
                return false;
            };
            node = child;
        }
        match node.values.get_mut(value) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                node.values.remove(value);
            }
            None => return false,
        }
        true
    }

    /// Every value whose pattern matches `key`, each once.
    pub fn matches(&self, key: &str, out: &mut Vec<V>) {
        let mut found = Vec::new();
        self.matches_ref(key, &mut found);
        out.extend(found.into_iter().cloned());
    }

    /// [`TopicTrie::matches`] without cloning the values: what routing
    /// uses, so a publish allocates nothing per matched binding.
    pub fn matches_ref<'a>(&'a self, key: &str, out: &mut Vec<&'a V>) {
        let mut states = States::new();
        let mut next = States::new();
        states.add(&self.root);
        // The empty key has no words.
        for w in key.split('.').filter(|_| !key.is_empty()) {
            next.clear();
            for node in &states.list {
                if node.is_hash {
                    next.add(node);
                }
                // A literal "*" or "#" in a key reaches the wildcard child
                // here, which matches it anyway; states are sets.
                if let Some(child) = node.children.get(w) {
                    next.add(child);
                }
                if let Some(star) = node.children.get("*") {
                    next.add(star);
                }
            }
            if next.list.is_empty() {
                return;
            }
            std::mem::swap(&mut states, &mut next);
        }
        let start = out.len();
        for node in &states.list {
            node.values.keys_into(out);
        }
        // A value bound through several matching patterns is routed once.
        if states.list.len() > 1 {
            dedup_from(out, start);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

/// Removes repeats from `out[start..]`, keeping the first of each in
/// order: a scan while few (no allocation), a hash set past that.
pub(crate) fn dedup_from<T: Eq + Hash + Copy>(out: &mut Vec<T>, start: usize) {
    const SCAN: usize = 16;
    if out.len() - start <= SCAN {
        let mut i = start + 1;
        while i < out.len() {
            if out[start..i].contains(&out[i]) {
                out.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    let tail = out.split_off(start);
    let mut seen: HashSet<T> = HashSet::with_capacity_and_hasher(tail.len(), Default::default());
    out.extend(tail.into_iter().filter(|v| seen.insert(*v)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.matches(key, &mut out);
        out.sort();
        out
    }

    fn trie(patterns: &[&str]) -> TopicTrie<u32> {
        let mut t = TopicTrie::default();
        for (i, p) in patterns.iter().enumerate() {
            t.insert(p, i as u32);
        }
        t
    }

    #[test]
    fn a_node_is_small() {
        // Each subscription's last word is a node in its parent's table.
        assert!(std::mem::size_of::<Node<std::sync::Arc<u8>>>() <= 40);
    }

    #[test]
    fn star_matches_exactly_one_word() {
        let t = trie(&["a.*.c"]);
        assert_eq!(routed(&t, "a.b.c"), vec![0]);
        assert_eq!(routed(&t, "a.c"), Vec::<u32>::new());
        assert_eq!(routed(&t, "a.b.b.c"), Vec::<u32>::new());
        assert_eq!(routed(&t, "a..c"), vec![0], "an empty word is a word");
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        let t = trie(&["a.#", "#", "a.#.c", "#.c"]);
        assert_eq!(routed(&t, "a"), vec![0, 1], "a.# matches a with zero words");
        assert_eq!(routed(&t, "a.b.c"), vec![0, 1, 2, 3]);
        assert_eq!(routed(&t, "a.c"), vec![0, 1, 2, 3]);
        assert_eq!(routed(&t, "c"), vec![1, 3]);
        assert_eq!(routed(&t, ""), vec![1], "# matches the empty key");
        assert_eq!(routed(&t, "x.y"), vec![1]);
    }

    #[test]
    fn empty_words_and_empty_keys() {
        let t = trie(&["", "a..b", ".", "*"]);
        assert_eq!(
            routed(&t, ""),
            vec![0],
            "empty pattern only matches empty key"
        );
        assert_eq!(routed(&t, "a..b"), vec![1]);
        assert_eq!(routed(&t, "a.b"), Vec::<u32>::new());
        assert_eq!(routed(&t, "."), vec![2], "'.' is two empty words");
        assert_eq!(routed(&t, "x"), vec![3]);
    }

    #[test]
    fn literal_star_in_key_is_matched_once() {
        let t = trie(&["a.*", "a.b"]);
        assert_eq!(routed(&t, "a.*"), vec![0]);
        assert_eq!(routed(&t, "a.b"), vec![0, 1]);
    }

    #[test]
    fn a_value_bound_twice_is_routed_once() {
        let mut t = TopicTrie::default();
        t.insert("a.*", 7u32);
        t.insert("#", 7u32);
        t.insert("a.#.#", 7u32);
        assert_eq!(routed(&t, "a.b"), vec![7]);
    }

    #[test]
    fn remove_prunes_and_reports() {
        let mut t = trie(&["a.b.c", "a.#"]);
        t.insert("a.b.c", 0);
        assert!(t.remove("a.b.c", &0));
        assert_eq!(
            routed(&t, "a.b.c"),
            vec![0, 1],
            "one of two bindings remains"
        );
        assert!(t.remove("a.b.c", &0));
        assert!(!t.remove("a.b.c", &0));
        assert_eq!(routed(&t, "a.b.c"), vec![1]);
        assert!(t.remove("a.#", &1));
        assert!(t.is_empty());
    }

    #[test]
    fn matches_function_agrees_with_trie() {
        let patterns = [
            "a.*.c", "a.#", "#", "#.c", "*", "", "a..c", "*.*", "a.#.#.c",
        ];
        let keys = ["", "a", "a.b", "a.b.c", "a..c", "c", "x.y.z", "a.b.b.c"];
        let t = trie(&patterns);
        for k in keys {
            let expected: Vec<u32> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| matches(p, k))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(routed(&t, k), expected, "key {k:?}");
        }
    }

    /// The textbook recursive matcher, exponential in the worst case: the
    /// reference the walks above are checked against on small inputs.
    fn naive(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| naive(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && naive(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && naive(rest, &k[1..]),
        }
    }

    #[test]
    fn trie_and_function_agree_with_the_reference_on_every_small_case() {
        // Every pattern and key of up to 4 words over a small alphabet.
        let alphabet = ["a", "b", "*", "#", ""];
        let mut all: Vec<String> = vec![String::new()];
        let mut layer: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..4 {
            let mut next = Vec::new();
            for w in &layer {
                for a in alphabet {
                    let mut v = w.clone();
                    v.push(a);
                    all.push(v.join("."));
                    next.push(v);
                }
            }
            layer = next;
        }
        let keys: Vec<&String> = all.iter().filter(|k| !k.contains('#')).collect();
        let t = trie(&all.iter().map(String::as_str).collect::<Vec<_>>());
        for k in keys {
            let mut expected: Vec<u32> = Vec::new();
            for (i, p) in all.iter().enumerate() {
                let want = naive(&words(p), &words(k));
                assert_eq!(matches(p, k), want, "pattern {p:?} key {k:?}");
                if want {
                    expected.push(i as u32);
                }
            }
            assert_eq!(routed(&t, k), expected, "key {k:?}");
        }
    }

    #[test]
    fn many_hashes_against_a_long_key_match_in_polynomial_time() {
        // `#.a.#.a. ... #.b` against 40 `a` words: the recursive walk tried
        // every way to split the key among the `#`s (27 s for nine of them).
        let pattern = std::iter::repeat_n("#.a", 12).collect::<Vec<_>>().join(".") + ".#.b";
        let key = vec!["a"; 40].join(".");
        let t = trie(&[pattern.as_str()]);
        assert_eq!(routed(&t, &key), Vec::<u32>::new());
        assert!(!matches(&pattern, &key));
        let hit = key.clone() + ".b";
        assert_eq!(routed(&t, &hit), vec![0]);
        assert!(matches(&pattern, &hit));
    }

    #[test]
    fn thirty_thousand_levels_neither_recurse_nor_overflow() {
        let deep = vec!["x"; 30_000].join(".");
        // A `#` at the end keeps this linear; one at the front would make
        // every level a live state at every word (quadratic in the levels,
        // which max_topic_levels bounds).
        let deep_hash = deep.clone() + ".#.#";
        let mut t = TopicTrie::default();
        t.insert(&deep, 1u32);
        t.insert(&deep_hash, 2u32);
        t.insert("#", 3u32);
        let mut out = Vec::new();
        t.matches(&deep, &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2, 3]);
        assert!(matches(&deep_hash, &deep));
        assert!(t.remove(&deep, &1));
        assert!(!t.remove(&deep, &1));
        // Dropping the remaining 30,000-level chain must not recurse either.
        drop(t);
    }

    #[test]
    fn removing_one_of_two_patterns_sharing_a_prefix_keeps_the_other() {
        let mut t = trie(&["a.b.c.d", "a.b", "a.b.x"]);
        assert!(t.remove("a.b.c.d", &0));
        assert_eq!(routed(&t, "a.b"), vec![1]);
        assert_eq!(routed(&t, "a.b.x"), vec![2]);
        assert!(t.remove("a.b", &1));
        assert_eq!(routed(&t, "a.b.x"), vec![2]);
        assert!(t.remove("a.b.x", &2));
        assert!(t.is_empty());
    }

    #[test]
    fn word_count_counts_empty_words() {
        assert_eq!(word_count(""), 0);
        assert_eq!(word_count("a"), 1);
        assert_eq!(word_count("a..b"), 3);
        assert_eq!(word_count("."), 2);
    }

    #[test]
    fn wide_nodes_and_many_values_cross_from_vector_to_map_and_back() {
        // 40 children under one node and 20 values on one pattern: both
        // pass SMALL_LIMIT, so lookups, removals and pruning run on the
        // hash map as well as on the vector.
        let mut t = TopicTrie::default();
        for i in 0..40u32 {
            t.insert(&format!("dev.{i}.temp"), i);
        }
        for v in 100..120u32 {
            t.insert("dev.*.temp", v);
        }
        t.insert("dev.#", 200);
        let mut want: Vec<u32> = vec![7];
        want.extend(100..120);
        want.push(200);
        assert_eq!(routed(&t, "dev.7.temp"), want);
        assert_eq!(routed(&t, "dev.99.temp"), {
            let mut w: Vec<u32> = (100..120).collect();
            w.push(200);
            w
        });
        for i in 0..40u32 {
            assert!(t.remove(&format!("dev.{i}.temp"), &i));
            assert!(!t.remove(&format!("dev.{i}.temp"), &i));
        }
        for v in 100..120u32 {
            assert!(t.remove("dev.*.temp", &v));
        }
        assert_eq!(routed(&t, "dev.7.temp"), vec![200]);
        assert!(t.remove("dev.#", &200));
        assert!(t.is_empty());
        assert_eq!(routed(&t, "dev.7.temp"), Vec::<u32>::new());
    }

    #[test]
    fn small_map_keeps_one_entry_per_key_in_both_forms() {
        let mut m: SmallMap<Box<str>, u32> = SmallMap::default();
        for round in 0..2 {
            for i in 0..20u32 {
                *m.get_or_insert_with(i.to_string().into(), || 0) += 1;
            }
            assert_eq!(m.len(), 20, "round {round}");
        }
        assert!(matches!(m, SmallMap::Many(_)));
        assert_eq!(m.get("7"), Some(&2));
        assert_eq!(m.remove("7"), Some(2));
        assert_eq!(m.get("7"), None);
        assert!(m.get("7").is_none());
        // One entry is held inline; a second makes a vector of exactly two.
        let mut few: SmallMap<Box<str>, u32> = SmallMap::default();
        *few.get_or_insert_with("a".into(), || 0) += 5;
        *few.get_or_insert_with("a".into(), || 0) += 1;
        assert!(matches!(&few, SmallMap::One(k, 6) if &**k == "a"));
        assert_eq!(few.get("b"), None);
        assert_eq!(few.remove("b"), None);
        *few.get_or_insert_with("b".into(), || 0) += 2;
        assert!(matches!(&few, SmallMap::Few(v) if v.len() == 2 && v.capacity() == 2));
        assert_eq!(few.get_mut("a").map(|n| *n), Some(6));
        assert_eq!(few.get("b"), Some(&2));
        assert_eq!(few.remove("a"), Some(6));
        assert_eq!(few.remove("b"), Some(2));
        assert!(few.is_empty());
        assert_eq!(few.take_values(), Vec::<u32>::new());
        let mut one: SmallMap<Box<str>, u32> = SmallMap::default();
        *one.get_or_insert_with("x".into(), || 0) += 1;
        assert_eq!(one.remove("x"), Some(1));
        assert!(one.is_empty() && one.get("x").is_none());
        *one.get_or_insert_with("y".into(), || 0) += 1;
        assert_eq!(one.take_values(), vec![1]);
        assert!(one.is_empty());
    }

    #[test]
    fn dedup_keeps_the_first_of_each_in_order_small_and_large() {
        let mut few = vec![9, 1, 2, 1, 3, 2, 1];
        dedup_from(&mut few, 1);
        assert_eq!(few, vec![9, 1, 2, 3]);
        // Past the scan limit a hash set does it, same result.
        let mut many: Vec<u32> = (0..60).map(|i| i % 25).collect();
        many.insert(0, 7);
        dedup_from(&mut many, 0);
        assert_eq!(
            many,
            (0..25)
                .map(|i| if i == 0 {
                    7
                } else if i <= 7 {
                    i - 1
                } else {
                    i
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn overlapping_patterns_route_a_value_once_by_reference() {
        let mut t = TopicTrie::default();
        for p in ["a.*", "a.#", "#", "a.b", "*.b"] {
            t.insert(p, "q1");
        }
        t.insert("a.b", "q2");
        let mut out = Vec::new();
        t.matches_ref("a.b", &mut out);
        out.sort();
        assert_eq!(out, vec![&"q1", &"q2"]);
        out.clear();
        t.matches_ref("", &mut out);
        assert_eq!(out, vec![&"q1"]);
    }
}
