//! Background tasks that do not die quietly: a task that panics is logged at error and
//! restarted, and while it is down `/readyz` answers 503 (see docs/architecture.md, "Nothing
//! fails silently").

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Which supervised tasks are down right now.
#[derive(Debug, Default)]
pub struct TaskHealth {
    down: Mutex<BTreeSet<&'static str>>,
}

impl TaskHealth {
    fn set(&self, task: &'static str, up: bool) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if up {
            down.remove(task);
        } else {
            down.insert(task);
        }
    }

    /// The names of the tasks that are down, for `/readyz`.
    pub fn down(&self) -> Vec<&'static str> {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        down.iter().copied().collect()
    }
}

/// The first wait before a restart; it doubles up to [`MAX_RESTART_DELAY`] while the task
/// keeps failing, so a task that panics at once does not spin.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// Runs the task `make` builds until `shutdown`, restarting it whenever it panics or returns
/// early. Aborting the returned handle aborts the task too (a crash, for tests).
pub fn supervise<F, Fut>(
    task: &'static str,
    health: Arc<TaskHealth>,
    shutdown: CancellationToken,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        // Should this supervisor itself stop (aborted, or its runtime gone) other than at
        // shutdown, the task shows as down instead of silently missing.
        let _watch = DownWhenDropped {
            task,
            health: health.clone(),
            shutdown: shutdown.clone(),
        };
        let mut delay = FIRST_RESTART_DELAY;
        loop {
            health.set(task, true);
            // In a set, so that aborting this supervisor drops (and aborts) the task.
            let mut running = JoinSet::new();
            running.spawn(make());
            let ended = running.join_next().await;
            if shutdown.is_cancelled() {
                return;
            }
            health.set(task, false);
            match ended {
                Some(Err(e)) if e.is_panic() => {
                    let message = panic_message(&*e.into_panic());
                    tracing::error!(task, %message, ?delay, "background task panicked; restarting");
                }
                _ => tracing::error!(task, ?delay, "background task stopped; restarting"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
        }
    })
}

/// Marks its task down when dropped, unless the service is shutting down.
struct DownWhenDropped {
    task: &'static str,
    health: Arc<TaskHealth>,
    shutdown: CancellationToken,
}

impl Drop for DownWhenDropped {
    fn drop(&mut self) {
        if !self.shutdown.is_cancelled() {
            self.health.set(self.task, false);
        }
    }
}

/// The text a panic was raised with, when it has one.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_shows_as_down_meanwhile() {
        let health = Arc::new(TaskHealth::default());
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let handle = {
            let runs = runs.clone();
            let shutdown = shutdown.clone();
            supervise("workers", health.clone(), shutdown.clone(), move || {
                let runs = runs.clone();
                let shutdown = shutdown.clone();
                async move {
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("boom");
                    }
                    shutdown.cancelled().await;
                }
            })
        };
        // Down right after the panic, up again once restarted.
        let mut saw_down = false;
        for _ in 0..100 {
            saw_down |= health.down() == vec!["workers"];
            if runs.load(Ordering::SeqCst) >= 2 && health.down().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(saw_down, "the panicked task was never reported down");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(health.down().is_empty());
        shutdown.cancel();
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "not restarted on shutdown");
    }

    #[tokio::test]
    async fn a_supervisor_that_stops_leaves_its_task_down_but_not_at_shutdown() {
        let health = Arc::new(TaskHealth::default());
        let shutdown = CancellationToken::new();
        let handle = supervise("scheduler", health.clone(), shutdown.clone(), || {
            std::future::pending::<()>()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(health.down().is_empty());
        handle.abort();
        let _ = handle.await;
        assert_eq!(health.down(), vec!["scheduler"]);

        let health = Arc::new(TaskHealth::default());
        let handle = supervise("workers", health.clone(), shutdown.clone(), || {
            std::future::pending::<()>()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        shutdown.cancel();
        handle.abort();
        let _ = handle.await;
        assert!(health.down().is_empty());
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_types() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42u8), "a panic without a message");
    }
}
