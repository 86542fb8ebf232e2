//! The service's log lines, captured as JSON for the tests that check what a line carries.
//! One subscriber serves the whole binary, so a test finds its own lines by an id it chose.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LINES: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();

struct Buffer(&'static Mutex<Vec<u8>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing (once per process), as `LOG_FORMAT=json` writes them.
pub fn capture_logs() {
    LINES.get_or_init(|| {
        let lines: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("aa_recurring=info")
            .with_writer(move || Buffer(lines))
            .init();
        lines
    });
}

/// Every captured line (parsed) that mentions `needle`.
pub fn log_lines_with(needle: &str) -> Vec<serde_json::Value> {
    let lines = LINES.get().expect("capture_logs() first").lock().unwrap();
    String::from_utf8_lossy(&lines)
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}
