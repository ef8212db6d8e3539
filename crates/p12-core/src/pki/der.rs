//! A minimal DER writer and reader for the few structures we encode ourselves.
//!
//! Certificates and CSRs are assembled here rather than through rcgen's
//! parameter types because those cannot carry what a real CA needs byte for
//! byte: the issuer name copied verbatim from the CA certificate (rcgen keeps
//! one value per attribute type and re-encodes strings), repeated attributes
//! such as two `OU`s, and the requester's SubjectPublicKeyInfo untouched.

use jiff::Timestamp;

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0c;
pub(crate) const TAG_PRINTABLE_STRING: u8 = 0x13;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_GENERALIZED_TIME: u8 = 0x18;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;

/// Encodes one tag-length-value.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &parts.concat())
}

pub(crate) fn set(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SET, &parts.concat())
}

/// `[n]` EXPLICIT (or constructed IMPLICIT) context-specific tag.
pub(crate) fn context_constructed(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, content)
}

/// `[n]` IMPLICIT primitive context-specific tag, as used by GeneralName.
pub(crate) fn context_primitive(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0x80 | n, content)
}

pub(crate) fn small_integer(value: u64) -> Vec<u8> {
    unsigned_integer(&value.to_be_bytes())
}

/// Encodes big-endian magnitude bytes as a non-negative INTEGER.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let trimmed = &magnitude[skip..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| *b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(TAG_INTEGER, &content)
}

pub(crate) fn boolean(value: bool) -> Vec<u8> {
    tlv(TAG_BOOLEAN, &[if value { 0xff } else { 0 }])
}

pub(crate) fn null() -> Vec<u8> {
    tlv(TAG_NULL, &[])
}

pub(crate) fn octet_string(content: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, content)
}

/// A BIT STRING holding whole bytes.
pub(crate) fn bit_string(content: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(content.len() + 1);
    body.push(0);
    body.extend_from_slice(content);
    tlv(TAG_BIT_STRING, &body)
}

/// A named-bit BIT STRING (e.g. KeyUsage), with trailing zero bits removed as DER requires.
pub(crate) fn named_bits(bits: u16) -> Vec<u8> {
    if bits == 0 {
        return tlv(TAG_BIT_STRING, &[0]);
    }
    let bytes = bits.to_be_bytes();
    let used = if bytes[1] == 0 {
        &bytes[..1]
    } else {
        &bytes[..]
    };
    let unused = used.last().map_or(0, |b| b.trailing_zeros() as u8);
    let mut body = vec![unused];
    body.extend_from_slice(used);
    tlv(TAG_BIT_STRING, &body)
}

pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    let mut push_base128 = |mut value: u64| {
        let mut chunk = vec![(value & 0x7f) as u8];
        value >>= 7;
        while value > 0 {
            chunk.push(0x80 | (value & 0x7f) as u8);
            value >>= 7;
        }
        chunk.reverse();
        content.extend_from_slice(&chunk);
    };
    push_base128(arcs[0] * 40 + arcs[1]);
    for arc in &arcs[2..] {
        push_base128(*arc);
    }
    tlv(TAG_OID, &content)
}

pub(crate) fn utf8_string(text: &str) -> Vec<u8> {
    tlv(TAG_UTF8_STRING, text.as_bytes())
}

pub(crate) fn printable_string(text: &str) -> Vec<u8> {
    tlv(TAG_PRINTABLE_STRING, text.as_bytes())
}

/// Whether `text` fits the PrintableString alphabet.
pub(crate) fn is_printable(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c))
}

/// UTCTime for 1950–2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5); whole seconds.
pub(crate) fn time(at: Timestamp) -> Vec<u8> {
    let year = at.to_zoned(jiff::tz::TimeZone::UTC).year();
    if (1950..2050).contains(&year) {
        tlv(
            TAG_UTC_TIME,
            at.strftime("%y%m%d%H%M%SZ").to_string().as_bytes(),
        )
    } else {
        tlv(
            TAG_GENERALIZED_TIME,
            at.strftime("%Y%m%d%H%M%SZ").to_string().as_bytes(),
        )
    }
}

/// One parsed element: its tag, its content and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads one element from the front of `input`; returns it and the rest.
/// Only definite lengths and single-byte tags, which is all DER allows for what we read.
pub(crate) fn read(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    let header_len = input.len() - rest.len();
    let element = Element {
        tag,
        content: &rest[..len],
        raw: &input[..header_len + len],
    };
    Some((element, &rest[len..]))
}

/// Reads every element of a constructed value's content.
pub(crate) fn read_all(mut content: &[u8]) -> Option<Vec<Element<'_>>> {
    let mut elements = Vec::new();
    while !content.is_empty() {
        let (element, rest) = read(content)?;
        elements.push(element);
        content = rest;
    }
    Some(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_encode_like_the_standard_examples() {
        // 1.2.840.113549.1.1.11 sha256WithRSAEncryption
        assert_eq!(
            oid(&[1, 2, 840, 113549, 1, 1, 11]),
            vec![
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b
            ]
        );
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(small_integer(0), vec![0x02, 0x01, 0x00]);
        assert_eq!(small_integer(127), vec![0x02, 0x01, 0x7f]);
        assert_eq!(small_integer(128), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(
            unsigned_integer(&[0, 0, 1, 2]),
            vec![0x02, 0x02, 0x01, 0x02]
        );
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let encoded = octet_string(&[7u8; 300]);
        assert_eq!(&encoded[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (element, rest) = read(&encoded).unwrap();
        assert_eq!(element.content.len(), 300);
        assert!(rest.is_empty());
    }

    #[test]
    fn named_bits_drop_trailing_zero_bits() {
        // digitalSignature only: one byte 0x80 with 7 unused bits.
        assert_eq!(named_bits(0x8000), vec![0x03, 0x02, 0x07, 0x80]);
        // keyCertSign + cRLSign: 0x06 with 1 unused bit.
        assert_eq!(named_bits(0x0600), vec![0x03, 0x02, 0x01, 0x06]);
        // decipherOnly spills into a second byte.
        assert_eq!(named_bits(0x8080), vec![0x03, 0x03, 0x07, 0x80, 0x80]);
    }

    #[test]
    fn times_switch_to_generalized_time_from_2050() {
        let t: Timestamp = "2030-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(time(t), tlv(TAG_UTC_TIME, b"300102030405Z"));
        let t: Timestamp = "2050-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(time(t), tlv(TAG_GENERALIZED_TIME, b"20500102030405Z"));
    }
}
