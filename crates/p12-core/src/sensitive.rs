//! Redacting wrappers for secret material.
//!
//! Private keys, keystore passwords and keystore bytes travel in these types so
//! that a stray `{:?}` or `{}` in a log line prints `<redacted>` instead of the
//! secret. On drop the buffer is overwritten with zeros (best effort: copies made
//! before wrapping, or by reallocation, are out of reach).

use std::fmt;

const REDACTED: &str = "<redacted>";

/// Overwrites a buffer with zeros in a way the optimiser may not remove.
fn wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        *byte = 0;
    }
    std::hint::black_box(bytes);
}

/// Compares two byte strings without stopping at the first difference.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Secret binary data: a private key in DER, keystore bytes.
#[derive(Clone, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret itself; keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Same as [`SecretBytes::expose`], named for call sites that want bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        equal_in_constant_time(&self.0, &other.0)
    }
}

impl Eq for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Secret text: a keystore password, a private key in PEM.
#[derive(Clone, Default)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The secret itself; keep the borrow short and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for SecretString {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        equal_in_constant_time(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for SecretString {}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        // Taking the String out leaves an empty one behind; its bytes are ours to wipe.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        wipe(&mut bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bytes_print_redacted_in_debug_and_display() {
        let secret = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
    }

    #[test]
    fn secret_string_prints_redacted_but_exposes_the_value() {
        let secret = SecretString::from("correct horse");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(secret.expose(), "correct horse");
        assert_eq!(secret.as_bytes(), b"correct horse");
    }

    #[test]
    fn secrets_compare_by_content() {
        assert_eq!(
            SecretBytes::from(vec![1, 2, 3]),
            SecretBytes::from(vec![1, 2, 3])
        );
        assert_ne!(
            SecretBytes::from(vec![1, 2, 3]),
            SecretBytes::from(vec![1, 2, 4])
        );
        assert_ne!(
            SecretBytes::from(vec![1, 2]),
            SecretBytes::from(vec![1, 2, 3])
        );
        assert_eq!(SecretString::from("a"), SecretString::from("a").clone());
        assert_ne!(SecretString::from("a"), SecretString::from("b"));
    }

    #[test]
    fn wipe_overwrites_every_byte() {
        let mut buffer = b"secret".to_vec();
        wipe(&mut buffer);
        assert_eq!(buffer, vec![0; 6]);
    }
}
