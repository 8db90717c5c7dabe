from hubtool.cli import main

main()
