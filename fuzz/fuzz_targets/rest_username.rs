//! TURN REST usernames `<expiry>:<userid>`: parsing never panics, the expiry is exactly the
//! digits before the first `:` (1 to 20, leading zeros allowed), the userid exactly what follows
//! it, and the expiry check agrees with the number.
#![no_main]

use turnkey_auth::{RestUsername, UnixTime};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(u) = RestUsername::parse(s) {
        let (digits, userid) = s.split_once(':').unwrap_or((s, ""));
        assert_eq!(digits.parse::<u64>().ok(), Some(u.expiry().0));
        assert_eq!(u.userid(), userid);
        let e = u.expiry().0;
        assert!(e == 0 || u.check_expiry(UnixTime(e - 1)).is_ok());
        assert!(e == u64::MAX || u.check_expiry(UnixTime(e + 1)).is_err());
    } else {
        let (digits, _) = s.split_once(':').unwrap_or((s, ""));
        let digits_ok = (1..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        let ok = s.len() <= 508 && digits_ok && digits.parse::<u64>().is_ok();
        assert!(!ok, "a well-formed username was refused: {s:?}");
    }
});
