//! The control plane's one clock. Durations (pauses, the guard's interval and window,
//! analysis intervals, the progress deadline, the scale-down delay) are measured on tokio's
//! clock, so `#[tokio::test(start_paused = true)]` controls all of them; timestamps written
//! to the store and the event history come from the wall source kept here, which a test can
//! replace (see [`Clock::following_tokio`]).

use std::sync::Arc;

/// Where the control plane reads the time of day.
#[derive(Clone)]
pub struct Clock {
    wall: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock {
            wall: Arc::new(crate::sys::unix_ms),
        }
    }

    /// A wall clock that starts at `start_unix_ms` and moves with tokio's clock: on a paused
    /// clock, timestamps advance exactly as far as the test advanced time.
    pub fn following_tokio(start_unix_ms: i64) -> Clock {
        let t0 = tokio::time::Instant::now();
        Clock {
            wall: Arc::new(move || start_unix_ms + t0.elapsed().as_millis() as i64),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        (self.wall)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.unix_ms())
    }
}
