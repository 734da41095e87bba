//! The faults a user brings along (a panic asked of the app, a form
//! abandoned mid-way, which half of a session is corrupted), each decided
//! from a key of its own rather than the journey's generator, so that heal
//! on and heal off meet the same faults (see `User::draw`).

/// The faults a user brings along, each drawn on its own (see [`User::draw`]).
#[derive(Clone, Copy)]
pub(super) enum Fault {
    Panic = 1,
    PanicAfter = 2,
    Disconnect = 3,
    CorruptCookie = 4,
}

/// The seed of one fault decision: the run's seed, the user, the action
/// (its kind and number), the try and the kind of fault, mixed.
pub(super) fn fault_key(seed: u64, user: usize, action: u64, attempt: u8, fault: Fault) -> u64 {
    let mut key = mix(seed ^ mix(user as u64));
    key = mix(key ^ action);
    mix(key ^ (u64::from(attempt) << 8 | fault as u64))
}

/// SplitMix64's finaliser: a well-spread 64-bit key from any input, so that
/// neighbouring users, actions and tries get unrelated decisions.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decisions a user draws are fair and independent of each other:
    /// a 1 % fault strikes about 1 % of tries, and two kinds of fault strike
    /// the same try about as often as chance says (1 in 10,000), not
    /// together because they share a key.
    #[test]
    fn fault_decisions_are_fair_and_independent() {
        let p = 0.01;
        let strikes = |fault, attempt, user, nth| {
            fastrand::Rng::with_seed(fault_key(42, user, nth, attempt, fault)).f64() < p
        };
        let (mut panics, mut both, mut retried, mut tries) = (0, 0, 0, 0);
        for user in 0..100 {
            for nth in 0..2_000 {
                tries += 1;
                let panic = strikes(Fault::Panic, 1, user, nth);
                panics += u32::from(panic);
                both += u32::from(panic && strikes(Fault::PanicAfter, 1, user, nth));
                retried += u32::from(panic && strikes(Fault::Panic, 2, user, nth));
            }
        }
        // Every kind of action has its own counter.
        assert_eq!(
            super::super::Action::Subscribe as usize + 1,
            super::super::Action::KINDS
        );
        let rate = f64::from(panics) / f64::from(tries);
        assert!((0.009..0.011).contains(&rate), "{rate}");
        assert!(both < 60 && retried < 60, "{both} {retried} of {panics}");
        assert_ne!(
            fault_key(42, 3, 17, 1, Fault::Disconnect),
            fault_key(43, 3, 17, 1, Fault::Disconnect)
        );
    }
}
