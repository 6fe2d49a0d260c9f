//! follower
