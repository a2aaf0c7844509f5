//! One shutdown for a whole process, as mini-redis does it: a cancellation signal every task
//! shares, one place that turns SIGINT/SIGTERM into it, and the first failure's cause kept to
//! report (later failures are usually its consequences). `demo`, `run` and `chaos` all use it.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The process's shutdown: cheap to clone, shared by every stage.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Why [`Shutdown::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C or SIGTERM.
    Signal(&'static str),
    /// A stage failed, or something else triggered the shutdown.
    Triggered,
    /// The caller's own condition (`until` returned true).
    Done,
}

impl Shutdown {
    /// A shutdown nobody has triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// The flag the runners poll (set once the shutdown is triggered).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Whether the shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Tells every task to stop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Records a failure (the first one is kept) and tells every task to stop.
    pub fn fail(&self, cause: impl Into<String>) {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| cause.into());
        self.trigger();
    }

    /// The first failure's cause, if any task failed.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs stage `name` on a thread of its own. Its error (or panic) fails the shutdown with
    /// "stage {name} failed: {error}", which [`Shutdown::join`] reports.
    pub fn spawn_stage<E: Display>(
        &self,
        name: &'static str,
        work: impl FnOnce() -> Result<(), E> + Send + 'static,
    ) -> std::io::Result<()> {
        let this = self.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(e) = work() {
                    tracing::error!(error = %e, stage = name, "Stage failed.");
                    this.fail(format!("stage {name} failed: {e}"));
                }
            })?;
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(handle);
        Ok(())
    }

    /// Triggers the shutdown, waits for every stage and returns the first failure's cause (a
    /// stage that panicked is one).
    pub fn join(&self) -> Result<(), String> {
        self.trigger();
        let workers = std::mem::take(
            &mut *self
                .workers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for worker in workers {
            let name = worker.thread().name().unwrap_or("a stage").to_owned();
            if worker.join().is_err() {
                self.fail(format!("stage {name} panicked; see the log above"));
            }
        }
        self.failure().map_or(Ok(()), Err)
    }

    /// Completes on Ctrl-C or SIGTERM, once the shutdown is triggered, or once `until` (called
    /// every `every`) returns true; triggers the shutdown in every case.
    pub async fn wait(&self, every: Duration, mut until: impl FnMut() -> bool) -> Stop {
        let mut tick = tokio::time::interval(every);
        let signal = signal();
        tokio::pin!(signal);
        let stop = loop {
            tokio::select! {
                name = &mut signal => {
                    tracing::info!(signal = name, "Shutting down.");
                    break Stop::Signal(name);
                }
                _ = tick.tick() => {
                    if self.is_triggered() {
                        if self.failure().is_some() {
                            tracing::warn!("Shutting down after a stage failure.");
                        }
                        break Stop::Triggered;
                    }
                    if until() {
                        break Stop::Done;
                    }
                }
            }
        };
        self.trigger();
        stop
    }
}

/// Completes on the first Ctrl-C (SIGINT) or SIGTERM, naming it: the one place a process turns
/// signals into a shutdown.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminate = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = terminate => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_the_cause_and_every_stage_stops() {
        let shutdown = Shutdown::new();
        let (tx, rx) = std::sync::mpsc::channel();
        // A stage that runs until told to stop.
        let flag = shutdown.flag();
        shutdown
            .spawn_stage("steady", move || {
                tx.send(()).unwrap();
                while !flag.load(Ordering::SeqCst) {
                    std::thread::park_timeout(Duration::from_millis(5));
                }
                Ok::<(), String>(())
            })
            .unwrap();
        rx.recv().unwrap();
        shutdown
            .spawn_stage("broken", || Err::<(), _>("disk full"))
            .unwrap();
        shutdown
            .spawn_stage("later", || Err::<(), _>("a consequence"))
            .unwrap();
        let cause = shutdown.join().unwrap_err();
        assert!(
            cause == "stage broken failed: disk full"
                || cause == "stage later failed: a consequence",
            "{cause}"
        );
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn a_panicking_stage_is_a_failure() {
        let shutdown = Shutdown::new();
        shutdown
            .spawn_stage("boom", || -> Result<(), String> { panic!("boom") })
            .unwrap();
        assert_eq!(
            shutdown.join().unwrap_err(),
            "stage boom panicked; see the log above"
        );
    }

    #[test]
    fn a_clean_run_joins_without_a_cause() {
        let shutdown = Shutdown::new();
        shutdown.spawn_stage("ok", || Ok::<(), String>(())).unwrap();
        assert_eq!(shutdown.join(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_ends_on_a_trigger_or_the_callers_condition() {
        let shutdown = Shutdown::new();
        let mut calls = 0;
        let stop = shutdown
            .wait(Duration::from_millis(100), || {
                calls += 1;
                calls == 3
            })
            .await;
        assert_eq!(stop, Stop::Done);
        assert!(shutdown.is_triggered(), "waiting ends in a shutdown");

        let other = Shutdown::new();
        other.fail("stage x failed: y");
        assert_eq!(
            other.wait(Duration::from_millis(100), || false).await,
            Stop::Triggered
        );
    }
}
