// The migrations are embedded at compile time (`embed_migrations!`): a
// changed migration must rebuild the crate, or a binary would carry the old
// SQL while the tests' template database is named after the new files.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
