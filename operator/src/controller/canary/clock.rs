//! Times in a canary's status: RFC 3339 text from the context's clock, read back, and the
//! seconds since such a time.

use k8s_openapi::jiff::Timestamp;

use super::super::Context;

pub(super) fn now_text(ctx: &Context) -> String {
    ctx.clock.now().to_string()
}

pub(super) fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|s| s.parse::<Timestamp>().ok())
}

pub(super) fn seconds_since(ctx: &Context, since: Option<&str>) -> u64 {
    let Some(since) = parse_time(since) else {
        return 0;
    };
    let elapsed = ctx.clock.now().as_second() - since.as_second();
    u64::try_from(elapsed).unwrap_or(0)
}
