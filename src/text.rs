//! Small text helpers used across the crate, each in one place: hex digits, cutting text at a
//! character boundary, a caught panic's message. Pure.

const LOWER: &[u8; 16] = b"0123456789abcdef";
const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the lowercase hex digits of `bytes` to `out`.
pub fn push_hex(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        out.push(char::from(LOWER[usize::from(b >> 4)]));
        out.push(char::from(LOWER[usize::from(b & 0x0f)]));
    }
}

/// The lowercase hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(bytes, &mut out);
    out
}

/// Appends the two uppercase hex digits of `b` (the name escaping's `_2E`).
pub fn push_hex_upper(b: u8, out: &mut String) {
    out.push(char::from(UPPER[usize::from(b >> 4)]));
    out.push(char::from(UPPER[usize::from(b & 0x0f)]));
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The message of a caught panic (`panic!("…")` carries a `&str` or a `String`).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_truncate() {
        assert_eq!(hex(&[0x00, 0xab, 0x2e]), "00ab2e");
        let mut s = String::new();
        push_hex_upper(0x2e, &mut s);
        assert_eq!(s, "2E");
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 9), "abc");
    }
}
