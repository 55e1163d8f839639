from tokentrim_cli.cli import main

main()
