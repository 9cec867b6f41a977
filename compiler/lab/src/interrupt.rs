//! Ctrl-C for the long-running tools (`lmc ab`, `lmc train`): the first stops the work at its
//! next safe point (after the run or step under way, which the tool then reports or saves), a
//! second ends the process at once. One handler per process, installed on first use. A front end
//! that has Ctrl-C of its own (a Python session, whose Ctrl-C must stay a `KeyboardInterrupt`)
//! says so with [`handled_by_front_end`] and passes it on with [`request`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static MESSAGE: Mutex<&str> = Mutex::new("");
static INSTALL: Once = Once::new();
static FRONT_END: AtomicBool = AtomicBool::new(false);

/// The front end catches Ctrl-C itself and calls [`request`]: no handler is installed.
pub fn handled_by_front_end() {
    FRONT_END.store(true, Ordering::SeqCst);
}

/// Asks the tool under way to stop at its next safe point, as a first Ctrl-C does.
pub fn request() {
    if !INTERRUPTED.swap(true, Ordering::SeqCst) {
        let message = *MESSAGE.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("\n{message}");
    }
}

/// Arms the handler for a tool: `message` is what the first Ctrl-C prints (what will happen),
/// and `lost` what is lost if no handler can be installed.
pub fn arm(message: &'static str, lost: &str) {
    INTERRUPTED.store(false, Ordering::SeqCst);
    *MESSAGE.lock().unwrap_or_else(|e| e.into_inner()) = message;
    if FRONT_END.load(Ordering::SeqCst) {
        return;
    }
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
