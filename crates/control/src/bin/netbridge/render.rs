//! `netbridge api --output table|text`: a CloudStack answer as an admin
//! reads it. The objects of a response (the list items, or the one object)
//! become table rows or `key = value` blocks; nested maps and lists are
//! shown compactly on one line.

use serde_json::Value;

/// The objects of a `{"<command>response": {…}}` answer.
fn objects(answer: &Value) -> Vec<&serde_json::Map<String, Value>> {
    let Some(body) = answer
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    // An empty answer (CloudStack omits an empty list): no rows.
    if body.is_empty() {
        return Vec::new();
    }
    // A list (`count` + items), or one wrapped object (`extension`), or the
    // fields themselves (errors, jobs, `success`).
    let lists: Vec<&Vec<Value>> = body.values().filter_map(Value::as_array).collect();
    if body.contains_key("count") && lists.len() == 1 {
        return lists[0].iter().filter_map(Value::as_object).collect();
    }
    if body.len() == 1 {
        if let Some(inner) = body.values().next().and_then(Value::as_object) {
            return vec![inner];
        }
    }
    vec![body]
}

/// One value on one line: text as is, maps as `k=v, …`, lists joined.
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.replace(['\n', '\r'], " "),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::Object(_) | Value::Array(_) => format!("{k}=[{}]", cell(v)),
                _ => format!("{k}={}", cell(v)),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Column order: `id` and `name` first, then the rest as they come.
fn columns(rows: &[&serde_json::Map<String, Value>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in ["id", "name"] {
        if rows.iter().any(|r| r.contains_key(key)) {
            out.push(key.to_string());
        }
    }
    for row in rows {
        for key in row.keys() {
            if !out.iter().any(|k| k == key) {
                out.push(key.clone());
            }
        }
    }
    out
}

/// A boxed table, one row per object.
pub fn table(answer: &Value) -> String {
    let rows = objects(answer);
    if rows.is_empty() {
        return "(no results)".to_string();
    }
    let cols = columns(&rows);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| r.get(c).map(cell).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain(std::iter::once(c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule = {
        let mut line = String::from("+");
        for w in &widths {
            line.push_str(&"-".repeat(w + 2));
            line.push('+');
        }
        line
    };
    let line = |values: &[String]| {
        let mut out = String::from("|");
        for (v, w) in values.iter().zip(&widths) {
            out.push(' ');
            out.push_str(v);
            out.push_str(&" ".repeat(w - v.chars().count() + 1));
            out.push('|');
        }
        out
    };
    let mut out = vec![rule.clone(), line(&cols), rule.clone()];
    out.extend(cells.iter().map(|row| line(row)));
    out.push(rule);
    out.join("\n")
}

/// `key = value` lines, objects separated by a blank line.
pub fn text(answer: &Value) -> String {
    let rows = objects(answer);
    let blocks: Vec<String> = rows
        .iter()
        .map(|row| {
            columns(&[row])
                .iter()
                .map(|k| format!("{k} = {}", row.get(k).map(cell).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    blocks.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_as_table_and_text() {
        let answer = json!({"listextensionsresponse": {"count": 2, "extension": [
            {"name": "a", "id": "1", "state": "Enabled", "details": {"k": "v"}},
            {"id": "22", "name": "bb", "state": "Disabled"}
        ]}});
        assert_eq!(
            table(&answer),
            "+----+------+---------+----------+\n\
             | id | name | details | state    |\n\
             +----+------+---------+----------+\n\
             | 1  | a    | k=v     | Enabled  |\n\
             | 22 | bb   |         | Disabled |\n\
             +----+------+---------+----------+"
        );
        assert_eq!(
            text(&answer),
            "id = 1\nname = a\ndetails = k=v\nstate = Enabled\n\nid = 22\nname = bb\nstate = Disabled"
        );
    }

    #[test]
    fn one_object_errors_and_empty_lists() {
        let one = json!({"createextensionresponse": {"extension": {"id": "1", "name": "a"}}});
        assert_eq!(text(&one), "id = 1\nname = a");
        let err = json!({"createextensionresponse": {"errorcode": 431, "errortext": "bad"}});
        assert_eq!(text(&err), "errorcode = 431\nerrortext = bad");
        assert_eq!(
            table(&json!({"listextensionsresponse": {}})),
            "(no results)"
        );
    }
}
