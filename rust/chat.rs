//! The sample JSON of a conversation row (`fastwds.sources.chat`), built without Python for the
//! rows whose checks need no judgment: every turn's role spelled exactly as one of the known
//! roles, every turn with visible text, one `<image>` token per image, every image passing its
//! checks. Such a row's document is the same bytes Python's
//! `json.dumps(document, ensure_ascii=False, separators=(",", ":"))` gives; any other row gets
//! None and is judged (and rejected, with its reason) by the Python rules, so the two paths can
//! never disagree about what is written. No PyO3 here: `cargo test` covers it.

/// LLaVA's and the chat spelling's role names, exactly as written, and the role written for each.
/// Any other spelling (" Human", "GPT") goes to the Python rules, which also accept those.
const ROLES: [(&[u8], &str); 5] =
    [(b"human", "user"), (b"user", "user"), (b"gpt", "assistant"), (b"assistant", "assistant"), (b"system", "system")];

/// One image of a row, as its header check found it.
#[derive(Clone, Debug)]
pub struct ImageMeta<'a> {
    pub format: &'a str,
    pub width: u32,
    pub height: u32,
}

/// A turn's (role, content) as raw UTF-8 bytes, None for a null value.
pub type Turn<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A conversation row as the Arrow arrays hold it: raw UTF-8 bytes, None for a null value.
/// A turn is (role, content) after the spelling's precedence: `role` when not null, else `from`;
/// `content` when not null, else `value`.
pub struct ChatRow<'a> {
    pub id: Option<&'a [u8]>,
    pub turns: Vec<Turn<'a>>,
    pub data_source: Option<&'a [u8]>,
    /// Each image's check: None when it failed (the Python rules report why).
    pub images: Vec<Option<ImageMeta<'a>>>,
    pub file: &'a str,
    pub row: u64,
}

/// What the rules of a source ask of a row's turns (`check_sample`'s arguments).
#[derive(Clone, Copy, Debug)]
pub struct TurnRules {
    /// The token that must occur once per medium (`<image>`).
    pub token: &'static str,
    /// A token that must not occur at all (SFT's other medium, `<video>`), if any.
    pub absent_token: Option<&'static str>,
    /// SFT: a system turn only as the first turn, and not the only kind of turn.
    pub system_first: bool,
}

pub const PARQUET_RULES: TurnRules = TurnRules { token: "<image>", absent_token: None, system_first: false };
pub const SFT_IMAGE_RULES: TurnRules = TurnRules { token: "<image>", absent_token: Some("<video>"), system_first: true };

/// The turns as written (role, content) when they pass `rules` with `media` media, or None when
/// the Python rules must judge them. `turns` are (role, content) after the spelling's precedence.
pub fn plain_turns<'a>(turns: &[(Option<&'a str>, Option<&'a str>)], media: usize, rules: TurnRules) -> Option<Vec<(&'static str, &'a str)>> {
    if turns.is_empty() {
        return None;
    }
    let mut plain = Vec::with_capacity(turns.len());
    let (mut tokens, mut absent) = (0, 0);
    for (number, &(role, content)) in turns.iter().enumerate() {
        let role = ROLES.iter().find(|(spelled, _)| Some(*spelled) == role.map(str::as_bytes))?.1;
        let content = content?;
        // Python's `content.strip()` is empty when every character is whitespace.
        if content.chars().all(is_python_space) || (rules.system_first && role == "system" && number > 0) {
            return None;
        }
        tokens += count(content.as_bytes(), rules.token.as_bytes());
        absent += rules.absent_token.map_or(0, |token| count(content.as_bytes(), token.as_bytes()));
        plain.push((role, content));
    }
    let only_system = plain.iter().all(|(role, _)| *role == "system");
    (tokens == media && absent == 0 && !(rules.system_first && only_system)).then_some(plain)
}

/// The row's sample JSON, or None when the Python rules must judge it.
pub fn simple_document(row: &ChatRow<'_>, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let id = text(row.id?)?;
    if id.is_empty() {
        return None;
    }
    let turns: Vec<(Option<&str>, Option<&str>)> = row.turns.iter()
        .map(|&(role, content)| Some((optional_text(role)?, optional_text(content)?)))
        .collect::<Option<_>>()?;
    let images: Vec<&ImageMeta> = row.images.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let turns = plain_turns(&turns, images.len(), PARQUET_RULES)?;
    let data_source = optional_text(row.data_source)?;

    out.extend_from_slice(b"{\"id\":");
    string(out, id);
    out.extend_from_slice(b",\"conversations\":");
    write_turns(out, &turns);
    out.extend_from_slice(b",\"data_source\":");
    match data_source {
        Some(source) => string(out, source),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"images\":[");
    for (i, image) in images.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"member\":");
        string(out, &member_name(image, i, images.len()));
        out.extend_from_slice(b",\"format\":");
        string(out, image.format);
        out.extend_from_slice(format!(",\"width\":{},\"height\":{}}}", image.width, image.height).as_bytes());
    }
    out.extend_from_slice(b"],\"source\":{\"file\":");
    string(out, row.file);
    out.extend_from_slice(format!(",\"row\":{}}}}}", row.row).as_bytes());
    Some(())
}

/// An SFT row's Energon sample JSON (`sources.sft.convert.SftConverter.members`) when it passes
/// the SFT image rules, or None: `{"media", "name", "texts", "id", "source"}`.
pub fn sft_document(id: &str, turns: &[(Option<&str>, Option<&str>)], images: &[Option<ImageMeta<'_>>], file: &str, row: u64,
                    out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    if id.is_empty() {
        return None;
    }
    let images: Vec<&ImageMeta> = images.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let turns = plain_turns(turns, images.len(), SFT_IMAGE_RULES)?;
    out.extend_from_slice(if images.is_empty() { b"{\"media\":\"text\",\"name\":[" } else { b"{\"media\":\"image\",\"name\":[" });
    for (i, image) in images.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, &member_name(image, i, images.len()));
    }
    out.extend_from_slice(b"],\"texts\":");
    write_turns(out, &turns);
    out.extend_from_slice(b",\"id\":");
    string(out, id);
    out.extend_from_slice(b",\"source\":{\"file\":");
    string(out, file);
    out.extend_from_slice(format!(",\"row\":{row}}}}}").as_bytes());
    Some(())
}

/// `jpg`/`png` for a sample's only image; `0.jpg`, `1.png`, ... for several (`image_member_names`).
fn member_name(image: &ImageMeta<'_>, i: usize, images: usize) -> String {
    let extension = if image.format == "jpeg" { "jpg" } else { image.format };
    if images == 1 { extension.to_string() } else { format!("{i}.{extension}") }
}

fn write_turns(out: &mut Vec<u8>, turns: &[(&str, &str)]) {
    out.push(b'[');
    for (i, (role, content)) in turns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"role\":");
        string(out, role);
        out.extend_from_slice(b",\"content\":");
        string(out, content);
        out.push(b'}');
    }
    out.push(b']');
}

/// Valid UTF-8 text, or None (Python could not have read the value as `str`).
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// None stays None (a null value); bytes must be UTF-8 text (Some(None): they are not).
fn optional_text(value: Option<&[u8]>) -> Option<Option<&str>> {
    match value {
        None => Some(None),
        Some(bytes) => text(bytes).map(Some),
    }
}

/// Whitespace as Python's `str.isspace` (and so `str.strip`) has it: Unicode's White_Space plus
/// the file, group, record and unit separators (0x1c-0x1f), which Rust's `char::is_whitespace`
/// leaves out (`[c for c in range(0x110000) if chr(c).isspace()]`).
fn is_python_space(c: char) -> bool {
    matches!(c, '\t'..='\r' | '\x1c'..=' ' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}'
        | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
}

/// Non-overlapping occurrences, as Python's `str.count`.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    let mut found = 0;
    let mut at = 0;
    while at + needle.len() <= haystack.len() {
        if &haystack[at..at + needle.len()] == needle {
            found += 1;
            at += needle.len();
        } else {
            at += 1;
        }
    }
    found
}

/// A JSON string as Python's encoder writes it with `ensure_ascii=False`: `"` and `\` escaped,
/// `\b \t \n \f \r` by name, other control characters below 0x20 as `\u00XX`, all else as it is.
fn string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg() -> Option<ImageMeta<'static>> {
        Some(ImageMeta { format: "jpeg", width: 64, height: 48 })
    }

    fn row<'a>(turns: Vec<Turn<'a>>, images: Vec<Option<ImageMeta<'a>>>) -> ChatRow<'a> {
        ChatRow { id: Some(b"00000007"), turns, data_source: Some(b"src"), images, file: "a/b.parquet", row: 7 }
    }

    fn document(row: &ChatRow<'_>) -> Option<String> {
        let mut out = Vec::new();
        simple_document(row, &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_valid_row_is_the_json_python_writes() {
        let turns = vec![(Some(&b"human"[..]), Some(&b"<image>\nWhat \"is\" it?"[..])), (Some(&b"gpt"[..]), Some(&b"A cat \xc3\xa9\x01."[..]))];
        assert_eq!(
            document(&row(turns, vec![jpeg()])).unwrap(),
            "{\"id\":\"00000007\",\"conversations\":[{\"role\":\"user\",\"content\":\"<image>\\nWhat \\\"is\\\" it?\"},\
             {\"role\":\"assistant\",\"content\":\"A cat \u{e9}\\u0001.\"}],\"data_source\":\"src\",\
             \"images\":[{\"member\":\"jpg\",\"format\":\"jpeg\",\"width\":64,\"height\":48}],\
             \"source\":{\"file\":\"a/b.parquet\",\"row\":7}}"
        );
    }

    #[test]
    fn several_images_are_numbered_and_a_null_source_is_null() {
        let turns = vec![(Some(&b"user"[..]), Some(&b"<image><image>"[..]))];
        let png = Some(ImageMeta { format: "png", width: 1, height: 2 });
        let mut sample = row(turns, vec![jpeg(), png]);
        sample.data_source = None;
        let json = document(&sample).unwrap();
        assert!(json.contains("\"data_source\":null"), "{json}");
        assert!(json.contains("{\"member\":\"0.jpg\",\"format\":\"jpeg\",\"width\":64,\"height\":48},{\"member\":\"1.png\""), "{json}");
    }

    #[test]
    fn rows_needing_judgment_go_to_the_python_rules() {
        let ok = (Some(&b"user"[..]), Some(&b"<image>hi"[..]));
        let cases: Vec<ChatRow> = vec![
            row(vec![(Some(b"Human"), Some(b"<image>hi"))], vec![jpeg()]), // a spelling Python folds
            row(vec![(None, Some(b"<image>hi"))], vec![jpeg()]),           // no role
            row(vec![(Some(b"user"), Some(b" \t\x1f<image>"))], vec![jpeg()]).images_failed(), // failed image
            row(vec![(Some(b"user"), Some(b" \x1c\n"))], vec![]),          // whitespace only
            row(vec![(Some(b"user"), Some(b"\xe3\x80\x80\xc2\x85"))], vec![]), // non-ASCII spaces only
            row(vec![(Some(b"user"), Some(b"hi"))], vec![jpeg()]),         // token count
            row(vec![(Some(b"user"), Some(b"<image><image>"))], vec![jpeg()]),
            row(vec![(Some(b"user"), Some(b"\xff<image>"))], vec![jpeg()]), // not UTF-8
            row(vec![(Some(b"user"), None)], vec![]),                      // no content
            row(vec![], vec![]),                                           // no turns
            ChatRow { id: Some(b""), ..row(vec![ok], vec![jpeg()]) },
            ChatRow { id: None, ..row(vec![ok], vec![jpeg()]) },
        ];
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(document(case), None, "case {i}");
        }
        assert!(document(&row(vec![ok], vec![jpeg()])).is_some());
    }

    impl<'a> ChatRow<'a> {
        fn images_failed(mut self) -> Self {
            self.images = vec![None];
            self
        }
    }

    #[test]
    fn whitespace_is_pythons() {
        let python: Vec<u32> = vec![0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001,
                                    0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029,
                                    0x202f, 0x205f, 0x3000];
        let ours: Vec<u32> = (0..=0x10ffff).filter_map(char::from_u32).filter(|&c| is_python_space(c)).map(u32::from).collect();
        assert_eq!(ours, python);
    }

    #[test]
    fn tokens_are_counted_without_overlap_and_escapes_match_python() {
        assert_eq!(count(b"<image><image>x<image", b"<image>"), 2);
        let mut out = Vec::new();
        string(&mut out, "\u{0}\u{8}\u{b}\u{c}\u{1f}\"\\/\u{7f}\u{2028}");
        assert_eq!(String::from_utf8(out).unwrap(), "\"\\u0000\\b\\u000b\\f\\u001f\\\"\\\\/\u{7f}\u{2028}\"");
    }
}
