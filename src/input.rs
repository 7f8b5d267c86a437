//! Bounds on the files fleet-authz is handed (configuration, policy,
//! posture): a size limit read without trusting the file's metadata, and no
//! YAML anchors or aliases. An alias is a reference the parser expands into
//! a full copy, so a small file of nested aliases ("billion laughs") grows
//! to gigabytes in memory before any validation can refuse it. Nothing in
//! these files needs them.

use std::{io::Read, path::Path};

use yaml_rust2::parser::{Event, Parser};

/// Largest configuration or policy file read.
pub const MAX_POLICY_BYTES: u64 = 4 * 1024 * 1024;
/// Largest posture file read (100,000 hosts in YAML are ~50 MB).
pub const MAX_POSTURE_BYTES: u64 = 512 * 1024 * 1024;

/// Reads `path` as UTF-8 text, refusing it when longer than `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    read_text_bounded(file, max)
}

/// Reads `reader` to its end as UTF-8 text, refusing more than `max` bytes
/// (it stops reading one byte past the limit).
pub fn read_text_bounded(reader: impl Read, max: u64) -> Result<String, String> {
    let mut text = String::new();
    reader
        .take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > max {
        return Err(format!("larger than the {max}-byte limit"));
    }
    Ok(text)
}

/// Refuses YAML with an anchor (`&name`) or an alias (`*name`), naming its
/// line. Text that does not parse is let through: the real parser then
/// reports the syntax error with its own message.
pub fn refuse_aliases(text: &str) -> Result<(), String> {
    let mut parser = Parser::new_from_str(text);
    loop {
        let Ok((event, mark)) = parser.next_token() else {
            return Ok(());
        };
        let anchored = match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => true,
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _) => anchor > 0,
            _ => false,
        };
        if anchored {
            return Err(format!(
                "line {}: YAML anchors and aliases (&name, *name) are not allowed",
                mark.line()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_and_aliases_are_refused_with_their_line() {
        let bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n";
        assert_eq!(
            refuse_aliases(bomb),
            Err("line 1: YAML anchors and aliases (&name, *name) are not allowed".into())
        );
        assert!(
            refuse_aliases("a: 1\nb:\n  - &x 2\n")
                .unwrap_err()
                .starts_with("line 3:")
        );
        // Look-alikes in text are fine.
        let fine = "fix: \"Tom & Jerry *nix\"\nsteps: |\n  * Open Settings\n  & then\nplain: use *nix & co\n";
        assert_eq!(refuse_aliases(fine), Ok(()));
        // Broken YAML is left to the real parser.
        assert_eq!(refuse_aliases("a: [unclosed"), Ok(()));
    }

    #[test]
    fn files_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, "x".repeat(101)).unwrap();
        assert_eq!(read_bounded(&path, 101).unwrap().len(), 101);
        assert_eq!(
            read_bounded(&path, 100),
            Err("larger than the 100-byte limit".into())
        );
    }
}
