fn main() {
    println!("{}", netbridge::build_id());
}
