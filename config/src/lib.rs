//! L0: typed configuration, defaults, pure validation; depends on nothing internal
