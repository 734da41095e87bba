//! Poison-tolerant locking, in one place.
//!
//! A `std` lock is *poisoned* when a thread panics while holding it. For
//! selfheal that is the normal case it exists for: the monitor must go on
//! recording after a handler panicked, and every lock here guards data that
//! stays consistent at every step (counters, maps written in one call, a
//! cached value), so a poisoned guard is taken over rather than turned into
//! a second panic.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, taking over a poisoned one.
#[inline]
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `lock`, taking over a poisoned one.
#[inline]
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `lock`, taking over a poisoned one.
#[inline]
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
