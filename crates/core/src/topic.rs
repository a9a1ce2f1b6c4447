//! The topic exchange's trie: binding patterns of dot-separated words where
//! `*` matches exactly one word and `#` zero or more. Words may be empty
//! (`a..b` has three words); the empty routing key has no words, as in
//! RabbitMQ's `rabbit_exchange_type_topic`.

use std::collections::HashMap;
use std::hash::Hash;

/// Splits a key or pattern into words; "" has none.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
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

/// Does `key` match `pattern`? (Used where no trie is kept, e.g. retained messages.)
pub fn matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && go(rest, &k[1..]),
        }
    }
    go(&normalise(pattern), &words(key))
}

/// A trie from binding patterns to the values bound with them.
#[derive(Debug)]
pub struct TopicTrie<V> {
    root: Node<V>,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<String, Node<V>>,
    /// Values bound with a pattern ending at this node.
    values: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            values: Vec::new(),
        }
    }
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

impl<V: Clone + PartialEq + Eq + Hash> TopicTrie<V> {
    /// Binds `value` with `pattern`. The same pair may be bound more than once
    /// (two bindings differing only in arguments); each needs its own remove.
    pub fn insert(&mut self, pattern: &str, value: V) {
        let mut node = &mut self.root;
        for w in normalise(pattern) {
            node = node.children.entry(w.to_string()).or_default();
        }
        node.values.push(value);
    }

    /// Removes one binding of the pair; returns whether there was one. Empty
    /// branches are pruned.
    pub fn remove(&mut self, pattern: &str, value: &V) -> bool {
        fn go<V: PartialEq>(node: &mut Node<V>, path: &[&str], value: &V) -> bool {
            match path.split_first() {
                None => match node.values.iter().position(|v| v == value) {
                    Some(i) => {
                        node.values.swap_remove(i);
                        true
                    }
                    None => false,
                },
                Some((w, rest)) => {
                    let Some(child) = node.children.get_mut(*w) else {
                        return false;
                    };
                    let removed = go(child, rest, value);
                    if child.values.is_empty() && child.children.is_empty() {
                        node.children.remove(*w);
                    }
                    removed
                }
            }
        }
        go(&mut self.root, &normalise(pattern), value)
    }

    /// Every value whose pattern matches `key`, each once.
    pub fn matches(&self, key: &str, out: &mut Vec<V>) {
        let ws = words(key);
        let start = out.len();
        walk(&self.root, &ws, 0, out);
        // A value bound through several matching patterns is routed once.
        let mut seen = std::collections::HashSet::new();
        let mut i = start;
        while i < out.len() {
            if seen.insert(out[i].clone()) {
                i += 1;
            } else {
                out.swap_remove(i);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty() && self.root.values.is_empty()
    }
}

fn walk<V: Clone>(node: &Node<V>, ws: &[&str], i: usize, out: &mut Vec<V>) {
    if let Some(hash) = node.children.get("#") {
        for j in i..=ws.len() {
            walk(hash, ws, j, out);
        }
    }
    if i == ws.len() {
        out.extend(node.values.iter().cloned());
        return;
    }
    // A literal "*" or "#" in a key reaches the wildcard child here, which
    // matches it anyway; the dedup in `matches` drops the second visit.
    if let Some(child) = node.children.get(ws[i]) {
        walk(child, ws, i + 1, out);
    }
    if ws[i] != "*"
        && let Some(star) = node.children.get("*")
    {
        walk(star, ws, i + 1, out);
    }
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
}
