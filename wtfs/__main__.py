from wtfs.cli import main

main()
