//! Where results go: stdout, or the file `.output FILE` named, until `.output stdout`.
//!
//! Everything a statement or a dot-command shows goes here (rows, counts, `.dump`'s SQL text,
//! `.status`, settings); errors, warnings, progress bars and the lines that say which node the
//! shell switched to stay on the terminal (stderr), as in sqlite3 and rqlite's shell. A file is
//! created empty (replacing one of that name) and flushed after every command, so what it holds
//! can be read while the shell goes on.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The output of a shell session.
#[derive(Debug, Default)]
pub enum Output {
    /// The shell's standard output.
    #[default]
    Stdout,
    /// A file `.output` created.
    File {
        /// Its name as given, for error messages.
        path: PathBuf,
        /// The open file.
        file: BufWriter<File>,
    },
}

impl Output {
    /// Output to `path`, created empty. Errors: it cannot be created, in words naming it.
    pub fn create(path: &Path) -> Result<Output, String> {
        let file =
            File::create(path).map_err(|e| format!("cannot write to {}: {e}", path.display()))?;
        Ok(Output::File { path: path.to_path_buf(), file: BufWriter::new(file) })
    }

    /// Writes `text`. Errors: the file refused it (a full disk), in words naming it.
    pub fn print(&mut self, text: &str) -> Result<(), String> {
        let written = self.write_all(text.as_bytes());
        written.map_err(|e| format!("writing to {}: {e}", self.name()))
    }

    /// Flushes what is buffered; a failure is reported as [`Output::print`] does.
    pub fn done(&mut self) -> Result<(), String> {
        self.flush().map_err(|e| format!("writing to {}: {e}", self.name()))
    }

    /// `stdout`, or the file's name.
    pub fn name(&self) -> String {
        match self {
            Output::Stdout => "stdout".to_string(),
            Output::File { path, .. } => path.display().to_string(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout => io::stdout().write(buf),
            Output::File { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout => io::stdout().flush(),
            Output::File { file, .. } => file.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_output_replaces_the_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        std::fs::write(&path, "old content\n").unwrap();
        let mut out = Output::create(&path).unwrap();
        assert_eq!(out.name(), path.display().to_string());
        out.print("a\n").unwrap();
        out.print("b\n").unwrap();
        out.done().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        assert_eq!(Output::Stdout.name(), "stdout");
        let missing = dir.path().join("no/such/dir/out.txt");
        let error = Output::create(&missing).unwrap_err();
        assert!(error.starts_with(&format!("cannot write to {}: ", missing.display())), "{error}");
    }
}
