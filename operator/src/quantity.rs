//! Kubernetes resource quantities (`500m`, `0.5`, `1Gi`, `1e3`) as exact numbers, so that
//! a desired `0.5` and the API server's canonical `500m` compare equal.

/// A quantity's value in units of 10⁻⁹ (exact for every suffix Kubernetes accepts up to
/// `Ei` and down to `n`).
pub fn parse(text: &str) -> Option<i128> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let (number, multiplier): (&str, i128) = {
        const BINARY: [(&str, u32); 6] = [
            ("Ki", 10),
            ("Mi", 20),
            ("Gi", 30),
            ("Ti", 40),
            ("Pi", 50),
            ("Ei", 60),
        ];
        const DECIMAL: [(&str, i32); 9] = [
            ("n", -9),
            ("u", -6),
            ("m", -3),
            ("k", 3),
            ("M", 6),
            ("G", 9),
            ("T", 12),
            ("P", 15),
            ("E", 18),
        ];
        if let Some((n, bits)) = BINARY
            .iter()
            .find_map(|(s, b)| text.strip_suffix(s).map(|n| (n, *b)))
        {
            (n, (1i128 << bits) * 1_000_000_000)
        } else if let Some((n, exp)) = DECIMAL
            .iter()
            .find_map(|(s, e)| text.strip_suffix(s).map(|n| (n, *e)))
        {
            (n, 10i128.checked_pow(u32::try_from(exp + 9).ok()?)?)
        } else if let Some((n, e)) = text.split_once(['e', 'E']) {
            let exp: i32 = e.parse().ok()?;
            if !(-9..=18).contains(&exp) {
                return None;
            }
            (n, 10i128.checked_pow(u32::try_from(exp + 9).ok()?)?)
        } else {
            (text, 1_000_000_000)
        }
    };
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole
        .chars()
        .chain(fraction.chars())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let scale = 10i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let fraction: i128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    // value = (whole + fraction / scale) × multiplier, exact only when it divides.
    let numerator = whole
        .checked_mul(scale)?
        .checked_add(fraction)?
        .checked_mul(multiplier)?;
    if numerator % scale != 0 {
        return None;
    }
    let value = numerator / scale;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn equal_quantities_are_equal_whatever_their_spelling() {
        assert_eq!(parse("0.5"), parse("500m"));
        assert_eq!(parse("1024Mi"), parse("1Gi"));
        assert_eq!(parse("1000m"), parse("1"));
        assert_eq!(parse("1e3"), parse("1k"));
        assert_eq!(parse("2"), Some(2_000_000_000));
        assert_ne!(parse("1Gi"), parse("1G"));
        assert_ne!(parse("500m"), parse("501m"));
    }

    #[test]
    fn words_are_not_quantities() {
        for text in [
            "",
            "cpu",
            "1.2.3",
            "Gi",
            "ghcr.io/x:1",
            "1e99",
            "--model",
            ".",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }
}
