"""One module per `tandem` subcommand, each with main(argv) -> int; imported lazily."""
