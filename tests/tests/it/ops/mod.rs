//! What operators rely on: health, reflection, load shedding and pooled
//! connections, one held row not taking billing down, jobs across a
//! database outage, secrets kept out of Debug, and the `stack` binary.
mod ended_connections;
mod held_rows;
mod jobs;
mod read_only_server;
mod secrets;
mod serving;
mod stack;
