//! The other side of routing, for the roster: which names the bridge's templates can
//! produce (the roster's input, as a NATS subject test and a Kafka topic regex), and the
//! templates of the roster's own outputs, which must stay outside that input.

use super::{Part, RouteError, Router, Slot, Template, TemplateError};
use crate::normalize::Action;

/// A template of a roster output (`roster.template`, `roster.sessions`): `{channel}`,
/// `{sub_key}` and `{source}`, escaped as the bridge escapes them.
#[derive(Debug, Clone)]
pub struct OutputTemplate(Template);

impl OutputTemplate {
    /// Compiles `text`.
    ///
    /// # Errors
    /// As the bridge's templates, and `{action}` (an output is not per action).
    pub fn new(text: &str) -> Result<OutputTemplate, TemplateError> {
        Template::new(text, &[Slot::Channel, Slot::SubKey, Slot::Source]).map(OutputTemplate)
    }

    /// Renders the name for `channel` into `out` (cleared first).
    ///
    /// # Errors
    /// Only when a `{sub_key}` is so long that even an empty channel would not fit.
    pub fn render(
        &self,
        channel: &str,
        sub_key: Option<&str>,
        out: &mut String,
    ) -> Result<(), RouteError> {
        self.0.render(channel, "", sub_key, out)
    }
}

impl Router {
    /// Whether some event could be published under `name` by the default template or a rule.
    pub fn produces(&self, name: &str) -> bool {
        std::iter::once(&self.default)
            .chain(self.rules.iter().map(|(_, t)| t))
            .any(|t| could_render(&t.parts, name.as_bytes()))
    }

    /// A regular expression (librdkafka's `^…` subscription) matching every topic the default
    /// template and the rules can produce, and no dead-letter or overflow name unless a
    /// template itself could produce it.
    pub fn topic_regex(&self) -> String {
        let alternatives: Vec<String> = std::iter::once(&self.default)
            .chain(self.rules.iter().map(|(_, t)| t))
            .map(|t| regex_of(&t.parts))
            .collect();
        format!("^({})$", alternatives.join("|"))
    }
}

/// The bytes an escaped value (or the no-sub-key marker) is made of.
fn escaped_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn could_render(parts: &[Part], name: &[u8]) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return name.is_empty();
    };
    match first {
        Part::Literal(text) => name
            .strip_prefix(text.as_bytes())
            .is_some_and(|tail| could_render(rest, tail)),
        Part::Slot(Slot::Source) => name
            .strip_prefix(b"pubnub")
            .is_some_and(|tail| could_render(rest, tail)),
        Part::Slot(Slot::Action) => Action::ALL.iter().any(|a| {
            name.strip_prefix(a.as_str().as_bytes())
                .is_some_and(|tail| could_render(rest, tail))
        }),
        Part::Slot(Slot::Channel | Slot::SubKey) => {
            let run = name.iter().take_while(|b| escaped_byte(**b)).count();
            (1..=run).any(|n| could_render(rest, &name[n..]))
        }
    }
}

fn regex_of(parts: &[Part]) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Literal(text) => {
                // Literals hold `[A-Za-z0-9._-]` only: `.` is the one metacharacter.
                for c in text.chars() {
                    if c == '.' {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
            Part::Slot(Slot::Source) => out.push_str("pubnub"),
            Part::Slot(Slot::Action) => {
                let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                out.push('(');
                out.push_str(&names.join("|"));
                out.push(')');
            }
            Part::Slot(Slot::Channel | Slot::SubKey) => out.push_str("[A-Za-z0-9_-]+"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;

    fn router(template: &str) -> Router {
        let config = RoutingConfig {
            template: template.to_owned(),
            ..RoutingConfig::default()
        };
        Router::new(&config).unwrap()
    }

    #[test]
    fn produces_tells_the_bridges_names_from_others() {
        let r = router("presence.{channel}.{action}");
        assert!(r.produces("presence.room_2Elobby.join"));
        assert!(r.produces("presence.a.state-change"));
        assert!(!r.produces("presence.a.b.join"));
        assert!(!r.produces("presence.room.joined"));
        assert!(!r.produces("hookbus.roster.room"));
        let r = router("pn-{sub_key}-{channel}");
        assert!(r.produces("pn-sub_2Dc-x-y"));
        assert!(!r.produces("pn-x"));
    }

    #[test]
    fn the_topic_regex_names_the_same_shape() {
        assert_eq!(
            router("presence.{channel}.{action}").topic_regex(),
            "^(presence\\.[A-Za-z0-9_-]+\\.(join|leave|timeout|state-change|active|inactive|interval))$"
        );
    }

    #[test]
    fn output_templates_render_escaped_and_refuse_action() {
        let t = OutputTemplate::new("hookbus.roster.{channel}").unwrap();
        let mut out = String::new();
        t.render("room.lobby", None, &mut out).unwrap();
        assert_eq!(out, "hookbus.roster.room_2Elobby");
        assert!(OutputTemplate::new("x.{action}").is_err());
        assert!(OutputTemplate::new("bad name").is_err());
    }
}
