//! Tracing events behind the `tracing` feature; without it they compile to nothing.

#[cfg(feature = "tracing")]
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {
        ::tracing::$level!($($arg)+)
    };
}

#[cfg(not(feature = "tracing"))]
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {};
}

pub(crate) use event;
