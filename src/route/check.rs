//! The routing section checked as `--check` and every start check it: the templates compiled,
//! and under JetStream, event subjects that a stream can capture without also capturing the
//! dead letters. Here rather than in `config` so that config imports nothing from `route`.

use crate::config::{Config, ConfigError, SinkKind};

use super::{OutputTemplate, Router, TemplateError};

/// Compiles `config.routing` and checks it against the sink it publishes to, naming the key
/// at fault.
///
/// # Errors
/// `routing.template`, `routing.dead_letter`, `routing.overflow` or `routing.rules[i]`.
pub fn check(config: &Config) -> Result<Router, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let router = Router::new(&config.routing).map_err(|e| match e {
        TemplateError::DeadLetter(m) => invalid("routing.dead_letter", m),
        TemplateError::Overflow(m) => invalid("routing.overflow", m),
        TemplateError::Rule(i, m) => ConfigError::InvalidAt {
            key: format!("routing.rules[{i}]"),
            message: m,
        },
        other => invalid("routing.template", other.to_string()),
    })?;
    if config.sink.kind == SinkKind::Nats && config.nats.jetstream {
        if router.stream_subjects().is_empty() {
            return Err(invalid(
                "routing.template",
                "JetStream needs a literal first token, like `presence.{channel}`".to_owned(),
            ));
        }
        if let Some(subject) = router.dead_letter_overlap() {
            return Err(invalid(
                "routing.dead_letter",
                format!(
                    "the event subject {subject} would take the dead letters too: dead letters \
                     need a stream of their own, so choose a subject outside it (e.g. another \
                     token count or prefix)"
                ),
            ));
        }
    }
    if let Some(roster) = &config.roster {
        check_roster_outputs(&router, &roster.template, "roster.template")?;
        check_roster_outputs(&router, &roster.sessions, "roster.sessions")?;
    }
    Ok(router)
}

/// A roster output compiles and lies outside what the bridge publishes (the roster's input)
/// and its dead letters.
fn check_roster_outputs(router: &Router, text: &str, key: &'static str) -> Result<(), ConfigError> {
    if text.is_empty() {
        return Ok(());
    }
    let template = OutputTemplate::new(text).map_err(|e| ConfigError::Invalid {
        key,
        message: e.to_string(),
    })?;
    let mut name = String::new();
    for channel in ["room.lobby", "x"] {
        template
            .render(channel, Some("sub-c-1"), &mut name)
            .map_err(|e| ConfigError::Invalid {
                key,
                message: e.to_string(),
            })?;
        if router.produces(&name) || name == router.dead_letter() {
            return Err(ConfigError::Invalid {
                key,
                message: format!(
                    "`{name}` could also be a name the bridge publishes events (or dead letters) \
                     under, so the roster would read its own output: choose a prefix outside \
                     routing.template, e.g. hookbus.roster.{{channel}}"
                ),
            });
        }
    }
    Ok(())
}
