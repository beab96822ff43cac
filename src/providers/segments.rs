//! SMS segment counting: GSM-7 or UCS-2, single or concatenated.
//!
//! The message text is read here only to count how many segments the provider will bill,
//! which drives the spend estimate. The text is never stored, logged or returned.

/// The GSM 03.38 basic character set (one septet each).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The GSM 03.38 extension table (an escape plus one septet each).
const GSM7_EXTENDED: &str = "\u{000C}^{}\\[~]|€";

/// Septets per ASCII character in GSM-7 (0: not in GSM-7), built from the tables above.
const ASCII_SEPTETS: [u8; 128] = ascii_septets();

const fn ascii_septets() -> [u8; 128] {
    let mut t = [0u8; 128];
    let (basic, ext) = (GSM7_BASIC.as_bytes(), GSM7_EXTENDED.as_bytes());
    let mut i = 0;
    while i < basic.len() {
        if basic[i] < 128 {
            t[basic[i] as usize] = 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < ext.len() {
        if ext[i] < 128 {
            t[ext[i] as usize] = 2;
        }
        i += 1;
    }
    t
}

/// How many segments `text` takes: GSM-7 when every character is in the GSM 03.38
/// tables (160 septets in one segment, 153 per part when concatenated), otherwise UCS-2
/// (70 UTF-16 units, 67 per part). An empty text is one segment.
pub fn count(text: &str) -> u32 {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in text.chars() {
        // Most texts are ASCII: a table answers those without a scan of the alphabet.
        let n = if c.is_ascii() {
            ASCII_SEPTETS[c as usize]
        } else if GSM7_BASIC.contains(c) {
            1
        } else if GSM7_EXTENDED.contains(c) {
            2
        } else {
            0
        };
        if n == 0 {
            gsm = false;
            break;
        }
        septets += usize::from(n);
    }
    let (units, single, part) = if gsm {
        (septets, 160, 153)
    } else {
        (text.encode_utf16().count(), 70, 67)
    };
    let n = if units <= single {
        1
    } else {
        units.div_ceil(part)
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn gsm7_boundaries() {
        assert_eq!(count(""), 1);
        assert_eq!(count(&"a".repeat(160)), 1);
        assert_eq!(count(&"a".repeat(161)), 2);
        assert_eq!(count(&"a".repeat(306)), 2);
        assert_eq!(count(&"a".repeat(307)), 3);
    }

    #[test]
    fn the_ascii_table_agrees_with_the_alphabet() {
        for b in 0u8..128 {
            let c = char::from(b);
            let want = if super::GSM7_BASIC.contains(c) {
                1
            } else if super::GSM7_EXTENDED.contains(c) {
                2
            } else {
                0
            };
            assert_eq!(super::ASCII_SEPTETS[usize::from(b)], want, "{b}");
        }
    }

    #[test]
    fn extension_chars_count_twice() {
        assert_eq!(count(&"€".repeat(80)), 1);
        assert_eq!(count(&"€".repeat(81)), 2);
    }

    #[test]
    fn ucs2_boundaries() {
        assert_eq!(count(&"é".repeat(200)), 2); // é is GSM-7
        assert_eq!(count(&"ж".repeat(70)), 1);
        assert_eq!(count(&"ж".repeat(71)), 2);
        assert_eq!(count(&"ж".repeat(134)), 2);
        assert_eq!(count(&"ж".repeat(135)), 3);
        // An emoji is two UTF-16 units.
        assert_eq!(count(&"😀".repeat(35)), 1);
        assert_eq!(count(&"😀".repeat(36)), 2);
    }
}
