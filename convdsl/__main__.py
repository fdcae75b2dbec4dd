from convdsl.cli import main

main()
