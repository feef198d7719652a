//! Tapio's correlation dataflow on timely and differential dataflow
