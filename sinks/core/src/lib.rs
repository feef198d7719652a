//! The Sink contract every Tapio destination implements
