//! Ctrl-C for the long-running tools (`lmc ab`, `lmc train`): the first stops the work at its
//! next safe point (after the run or step under way, which the tool then reports or saves), a
//! second ends the process at once. One handler per process, installed on first use, so a
//! front end that runs several tools in one process (a Python session) keeps it working.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static MESSAGE: Mutex<&str> = Mutex::new("");
static INSTALL: Once = Once::new();

/// Arms the handler for a tool: `message` is what the first Ctrl-C prints (what will happen),
/// and `lost` what is lost if no handler can be installed.
pub fn arm(message: &'static str, lost: &str) {
    INTERRUPTED.store(false, Ordering::SeqCst);
    *MESSAGE.lock().unwrap_or_else(|e| e.into_inner()) = message;
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            let message = *MESSAGE.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("\n{message}");
        });
        if let Err(e) = installed {
            crate::output::warning(&format!("Ctrl-C will end lmc {lost} ({e})"));
        }
    });
}

/// Whether Ctrl-C was pressed since the tool armed the handler.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
