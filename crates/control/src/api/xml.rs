//! CloudStack's XML response format, rendered from the JSON answer: the
//! `<command>response` element carries `cloud-stack-version`, object fields
//! become child elements, list items repeat their element, empty lists and
//! nulls are left out.
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?><listextensionsresponse cloud-stack-version="4.23.0.0"><count>1</count><extension><id>…</id>…</extension></listextensionsresponse>
//! ```

use serde_json::Value;

/// The CloudStack version this API answers as.
pub const CLOUDSTACK_VERSION: &str = "4.23.0.0";

/// Content type of XML answers.
pub const CONTENT_TYPE: &str = "text/xml; charset=UTF-8";

/// Renders a `{"<name>": {…}}` answer as CloudStack XML.
pub fn to_xml(answer: &Value) -> String {
    let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    match answer.as_object().and_then(|o| o.iter().next()) {
        Some((name, body)) => {
            out.push('<');
            out.push_str(name);
            out.push_str(" cloud-stack-version=\"");
            out.push_str(CLOUDSTACK_VERSION);
            out.push_str("\">");
            children(&mut out, body);
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        None => out.push_str("<response/>"),
    }
    out
}

fn children(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::Array(items) => items.iter().for_each(|item| element(out, key, item)),
                    _ => element(out, key, v),
                }
            }
        }
        other => escape_into(out, &scalar_text(other)),
    }
}

fn element(out: &mut String, name: &str, value: &Value) {
    if value.is_null() {
        return;
    }
    // Map keys (details) are free text; one that is not an XML name goes
    // into an attribute instead.
    let (open, close) = if is_xml_name(name) {
        (format!("<{name}>"), format!("</{name}>"))
    } else {
        let mut open = String::from("<entry key=\"");
        escape_into(&mut open, name);
        open.push_str("\">");
        (open, "</entry>".to_string())
    };
    out.push_str(&open);
    match value {
        Value::Object(_) => children(out, value),
        Value::Array(items) => items.iter().for_each(|item| element(out, name, item)),
        other => escape_into(out, &scalar_text(other)),
    }
    out.push_str(&close);
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.to_ascii_lowercase().starts_with("xml")
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not representable in XML 1.0; CloudStack refuses such input
            // anyway.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_objects_maps_and_escaping() {
        let answer = json!({"listextensionsresponse": {
            "count": 1,
            "extension": [{"id": "e1", "name": "a<b&c", "details": {"network.services": "Dhcp", "9x": "v"},
                           "resources": [], "pathready": true}]
        }});
        assert_eq!(
            to_xml(&answer),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><listextensionsresponse cloud-stack-version=\"4.23.0.0\">\
             <count>1</count><extension><details><entry key=\"9x\">v</entry><network.services>Dhcp</network.services></details>\
             <id>e1</id><name>a&lt;b&amp;c</name><pathready>true</pathready></extension></listextensionsresponse>"
        );
    }

    #[test]
    fn errors_and_empty_lists() {
        let answer = json!({"createextensionresponse": {"uuidList": [], "errorcode": 431,
            "cserrorcode": 4350, "errortext": "bad \"x\""}});
        assert_eq!(
            to_xml(&answer),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><createextensionresponse cloud-stack-version=\"4.23.0.0\">\
             <cserrorcode>4350</cserrorcode><errorcode>431</errorcode><errortext>bad &quot;x&quot;</errortext>\
             </createextensionresponse>"
        );
        assert_eq!(
            to_xml(&json!({"listextensionsresponse": {}})),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><listextensionsresponse cloud-stack-version=\"4.23.0.0\"></listextensionsresponse>"
        );
    }
}
