//! Problems found in configuration and policy files, each with its file, line and reason,
//! so `tokenbridge-server check` (and a refused `serve`) can point at the
//! exact place to fix.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

/// One problem in a configuration or policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// What is wrong, and where it helps, what would be right.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// Collects problems for one source text, turning byte spans into lines.
pub struct Problems<'a> {
    file: &'a Path,
    src: &'a str,
    /// The problems recorded so far.
    pub found: Vec<Problem>,
}

impl<'a> Problems<'a> {
    /// Problems in `src`, read from `file`.
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Self {
            file,
            src,
            found: Vec::new(),
        }
    }

    /// Records a problem at the start of `span`.
    pub fn at(&mut self, span: Range<usize>, reason: impl Into<String>) {
        let line = line_of(self.src, span.start);
        self.found.push(Problem {
            file: self.file.to_path_buf(),
            line: Some(line),
            reason: reason.into(),
        });
    }

    /// Records a problem with no place in the file.
    pub fn whole(&mut self, reason: impl Into<String>) {
        self.found.push(Problem {
            file: self.file.to_path_buf(),
            line: None,
            reason: reason.into(),
        });
    }

    /// Records a TOML syntax or shape error, with its line when it has one.
    pub fn toml(&mut self, err: &toml::de::Error) {
        let reason = format!("invalid TOML: {}", err.message().trim());
        match err.span() {
            Some(span) => self.at(span, reason),
            None => self.whole(reason),
        }
    }
}

/// The 1-based line that byte `offset` of `src` is on.
pub fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn lines_are_one_based() {
        let src = "a\nb\nc";
        assert_eq!(line_of(src, 0), 1);
        assert_eq!(line_of(src, 2), 2);
        assert_eq!(line_of(src, 4), 3);
        assert_eq!(line_of(src, 99), 3);
    }
}
