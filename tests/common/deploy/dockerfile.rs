//! A small reader for `deploy/Dockerfile` and `.dockerignore`: instructions
//! with their line continuations joined, grouped by build stage. No Docker
//! engine runs in the tests, so what can be checked offline is checked here:
//! what the stages copy, run as and expose.

/// One `FROM` stage with its instructions after `FROM`.
#[derive(Debug)]
pub struct Stage {
    /// The image after `FROM`.
    pub image: String,
    /// The name after `AS`, if any.
    pub name: Option<String>,
    /// (INSTRUCTION in upper case, arguments) in order.
    pub instructions: Vec<(String, String)>,
}

impl Stage {
    /// Arguments of every instruction named `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// Arguments of the last instruction named `name` (the one that wins).
    pub fn last(&self, name: &str) -> Option<&str> {
        self.all(name).pop()
    }
}

/// Splits a Dockerfile into stages. Comment lines are dropped and `\`
/// continuations joined, as Docker does.
pub fn parse(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical.iter().filter(|l| !l.is_empty()) {
        let (instr, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instr = instr.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instr == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                image: words.first().copied().unwrap_or("").to_owned(),
                name,
                instructions: vec![],
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instr, args));
        }
    }
    stages
}

/// The sources and destination of a `COPY`, and its `--from` stage if any.
#[derive(Debug)]
pub struct Copy {
    /// `--from=` value.
    pub from: Option<String>,
    /// Source paths.
    pub sources: Vec<String>,
    /// Destination path.
    pub dest: String,
}

/// Parses the arguments of one `COPY` (shell form).
pub fn parse_copy(args: &str) -> Copy {
    let mut from = None;
    let mut paths = Vec::new();
    for word in args.split_whitespace() {
        if let Some(f) = word.strip_prefix("--from=") {
            from = Some(f.to_owned());
        } else if !word.starts_with("--") {
            paths.push(word.to_owned());
        }
    }
    let dest = paths.pop().unwrap_or_default();
    Copy {
        from,
        sources: paths,
        dest,
    }
}

/// The strings of an exec-form instruction (`["a", "b"]`).
pub fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form: {args}: {e}"))
}

/// Whether a `.dockerignore` excludes `path` (relative to the context). Only
/// plain and directory patterns are understood; a wildcard pattern never
/// matches here, which is enough for the context's known layout.
pub fn ignored(dockerignore: &str, path: &str) -> bool {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains('*') && !l.starts_with('!'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .any(|pattern| path == pattern || path.starts_with(&format!("{pattern}/")))
}
