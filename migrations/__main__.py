from migrations.runner import main

main()
