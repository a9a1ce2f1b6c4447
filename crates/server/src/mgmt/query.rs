//! The list parameters of RabbitMQ's management API: `name` (substring,
//! or a regular expression with `use_regex=true`), `sort` and
//! `sort_reverse` (a field, dotted for nested ones), `columns` (the fields
//! to keep), and `page` / `page_size` (or `pagination=true`), which turn
//! the answer into a page object with `items` and the counts.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ApiError;

/// Most items on one page (RabbitMQ's cap).
const MAX_PAGE_SIZE: usize = 500;

/// The query string of a list.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub page: Option<String>,
    pub page_size: Option<String>,
    pub name: Option<String>,
    pub use_regex: Option<String>,
    pub pagination: Option<String>,
    pub columns: Option<String>,
    pub sort: Option<String>,
    pub sort_reverse: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn number(v: &Option<String>, what: &str, default: usize) -> Result<usize, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::bad_request(format!("{what} must be a positive integer"))),
    }
}

/// The value at a dotted path (`message_stats.publish_details.rate`).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// Orders values as RabbitMQ's sort does: numbers by value, strings
/// case-insensitively, missing last.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Keeps only `columns` (dotted paths) of an object.
fn pick(v: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    for c in columns {
        let Some(found) = at(v, c) else { continue };
        let mut parts = c.split('.').peekable();
        let mut here = &mut out;
        while let Some(p) = parts.next() {
            if parts.peek().is_none() {
                here.insert(p.to_owned(), found.clone());
                break;
            }
            let next = here
                .entry(p.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(m) => here = m,
                _ => break,
            }
        }
    }
    Value::Object(out)
}

/// Applies `q` to `items` (already sorted by name): the answer's body.
pub fn apply(mut items: Vec<Value>, q: &ListQuery) -> Result<Value, ApiError> {
    let total = items.len();
    if let Some(name) = q.name.as_deref().filter(|n| !n.is_empty()) {
        if truthy(&q.use_regex) {
            // Bounded backtracking: a hostile filter cannot stall a worker.
            let re = crate::users::permissions::compile(name).map_err(ApiError::bad_request)?;
            items.retain(|v| {
                at(v, "name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| re.is_match(n).unwrap_or(false))
            });
        } else {
            let needle = name.to_lowercase();
            items.retain(|v| {
                at(v, "name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
            });
        }
    }
    if let Some(field) = q.sort.as_deref().filter(|s| !s.is_empty()) {
        items.sort_by(|a, b| compare(at(a, field), at(b, field)));
    }
    if truthy(&q.sort_reverse) {
        items.reverse();
    }
    if let Some(cols) = q.columns.as_deref().filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        items = items.iter().map(|v| pick(v, &cols)).collect();
    }
    let paged = q.page.is_some() || truthy(&q.pagination);
    if !paged {
        return Ok(Value::Array(items));
    }
    let page = number(&q.page, "page", 1)?;
    let size = number(&q.page_size, "page_size", 100)?;
    if size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!(
            "page_size must be at most {MAX_PAGE_SIZE}"
        )));
    }
    let filtered = items.len();
    let page_count = filtered.div_ceil(size).max(1);
    if page > page_count {
        return Err(ApiError::bad_request(format!(
            "page {page} is past the last page ({page_count})"
        )));
    }
    let shown: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .collect();
    Ok(serde_json::json!({
        "filtered_count": filtered,
        "item_count": shown.len(),
        "items": shown,
        "page": page,
        "page_count": page_count,
        "page_size": size,
        "total_count": total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &Value) -> Vec<&str> {
        let items = v.get("items").unwrap_or(v);
        items
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["name"].as_str()).collect())
            .unwrap_or_default()
    }

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        let s: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        serde_urlencoded_like(&s)
    }

    /// The tests build queries as the router would parse them.
    fn serde_urlencoded_like(s: &str) -> ListQuery {
        let mut out = ListQuery::default();
        for pair in s.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = Some(v.to_owned());
            match k {
                "page" => out.page = v,
                "page_size" => out.page_size = v,
                "name" => out.name = v,
                "use_regex" => out.use_regex = v,
                "pagination" => out.pagination = v,
                "columns" => out.columns = v,
                "sort" => out.sort = v,
                "sort_reverse" => out.sort_reverse = v,
                _ => {}
            }
        }
        out
    }

    fn items() -> Vec<Value> {
        vec![
            json!({"name": "a1", "messages": 5, "message_stats": {"publish": 1}}),
            json!({"name": "b2", "messages": 50}),
            json!({"name": "A3", "messages": 7}),
        ]
    }

    #[test]
    fn filters_sorts_and_pages() {
        let v = apply(items(), &q(&[("name", "a")])).expect("ok");
        assert_eq!(names(&v), vec!["a1", "A3"]);
        let v = apply(items(), &q(&[("name", "^[ab]\\d$"), ("use_regex", "true")])).expect("ok");
        assert_eq!(names(&v), vec!["a1", "b2"]);
        let v = apply(
            items(),
            &q(&[("sort", "messages"), ("sort_reverse", "true")]),
        )
        .expect("ok");
        assert_eq!(names(&v), vec!["b2", "A3", "a1"]);
        let v = apply(items(), &q(&[("page", "2"), ("page_size", "2")])).expect("ok");
        assert_eq!(names(&v), vec!["A3"]);
        assert_eq!(v["page_count"], 2);
        assert_eq!(v["total_count"], 3);
        assert_eq!(v["item_count"], 1);
        assert!(apply(items(), &q(&[("page", "3"), ("page_size", "2")])).is_err());
        assert!(apply(items(), &q(&[("page", "0")])).is_err());
    }

    #[test]
    fn a_catastrophic_filter_ends_as_no_match() {
        let all: Vec<Value> = (0..50).map(|_| json!({"name": "a".repeat(40)})).collect();
        // Past the backtracking bound a name does not match (an unbounded
        // engine would take 2^40 steps per name here).
        let v = apply(all, &q(&[("name", "^(a|a)*(?=b)c"), ("use_regex", "true")])).expect("ok");
        assert_eq!(names(&v), Vec::<&str>::new());
        assert!(apply(vec![], &q(&[("name", "("), ("use_regex", "true")])).is_err());
    }

    #[test]
    fn columns_keep_dotted_fields() {
        let v = apply(items(), &q(&[("columns", "name,message_stats.publish")])).expect("ok");
        assert_eq!(v[0], json!({"name": "a1", "message_stats": {"publish": 1}}));
        assert_eq!(v[1], json!({"name": "b2"}));
    }
}
