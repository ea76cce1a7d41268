//! Placeholder until the Here Now client lands.

use std::time::Duration;

pub struct HereNowSettings {
    pub origin: String,
    pub subscribe_key: String,
    pub publish_key: String,
    pub secret_key: String,
    pub timeout: Duration,
    pub max_requests_per_second: u32,
}
pub struct HereNowClient;
pub struct HereNowRead {
    pub requested_at_ms: u64,
    pub occupancy: u64,
    pub members: Vec<HereNowMember>,
}
pub struct HereNowMember {
    pub uuid: String,
    pub state: Option<serde_json::Value>,
}
#[derive(Debug, thiserror::Error)]
pub enum HereNowError {
    #[error("busy")]
    Busy,
}
impl HereNowError {
    pub fn result_label(&self) -> &'static str {
        "busy"
    }
}
impl HereNowClient {
    pub fn new(_: HereNowSettings) -> Result<HereNowClient, HereNowError> {
        Ok(HereNowClient)
    }
    #[allow(clippy::unused_async)]
    pub async fn read(&self, _: &str) -> Result<HereNowRead, HereNowError> {
        Err(HereNowError::Busy)
    }
}
pub fn backoff(_: u32, _: f64) -> Duration {
    Duration::from_secs(1)
}
