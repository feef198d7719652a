//! The Source contract every Tapio collector implements
