use super::*;

#[test]
fn breaker_opens_after_repeated_failures_and_closes_on_success() {
    let b = Breaker::default();
    for _ in 0..BREAKER_THRESHOLD - 1 {
        assert!(!b.failure());
    }
    assert!(b.allow().is_ok());
    assert!(b.failure(), "the threshold opens it");
    assert!(b.allow().is_err());
    b.success();
    assert!(b.allow().is_ok());
}

#[test]
fn jitter_is_bounded() {
    for _ in 0..100 {
        assert!(jitter(Duration::from_millis(10)) < Duration::from_millis(10));
    }
    assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
}
