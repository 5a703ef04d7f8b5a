// The migrations and SQL functions are embedded at compile time
// (`embed_migrations!`, `include_str!`): a changed file must rebuild the
// crate, or a binary would carry the old SQL while the tests' template
// database is named after the new files.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=sql");
}
