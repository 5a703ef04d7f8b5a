// The migrations are embedded at compile time (`embed_migrations!`): a
// changed file must rebuild the crate, or a binary would carry the old SQL
// while the tests' template database is named after the new files. The
// SQL functions are embedded with `include_str!`, which cargo tracks itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
