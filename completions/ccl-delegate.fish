# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ccl_delegate_global_optspecs
    string join \n config= api-url= http-timeout= retries= v/verbose q/quiet h/help V/version
end

function __fish_ccl_delegate_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ccl_delegate_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ccl_delegate_using_subcommand
    set -l cmd (__fish_ccl_delegate_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "init" -d 'Create a project\'s queue: DIR/.agent-queue/{inbox,done,failed}'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "decide" -d 'Print where a task would run (pure: no network, no writes)'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "submit" -d 'Hand an inbox task to secutools and mark it delegated'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "reap" -d 'Bring finished jobs back into done/ and failed/ (run from cron)'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "get" -d 'Show a job\'s status'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "result" -d 'Print a completed job\'s response'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "status" -d 'Show delegated tasks in flight and totals of done and failed tasks'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "cancel" -d 'Ask the service to cancel a job'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "requeue" -d 'Put a failed task back into the inbox'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "doctor" -d 'Check the configuration, the key, the service and the queues'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "report" -d 'Jobs, failures, cost and turnaround from the ledger, and the budgets'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "ledger" -d 'Maintain the host\'s ledger of finished jobs'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "fleet" -d 'Share this host\'s books with the fleet\'s database (config `fleet`)'
complete -c ccl-delegate -n "__fish_ccl_delegate_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand init" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -l set -d 'Route these frontmatter keys instead of a file (KEY=VALUE, repeatable)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -l explain -d 'Add a line naming the rule that decided, and one naming the task\'s fallback chain'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -l json -d 'Print {"provider","delegate","rule","fallback"} as JSON'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand decide" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -l priority -d 'Priority sent to secutools (beats the task\'s `priority`)' -r -f -a "low\t''
normal\t''
high\t''"
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand submit" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l project -d 'A project directory to reap (repeatable) [default: the config\'s projects]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l lock-file -d 'The run lock [default: $XDG_STATE_HOME/ccl-delegate/reap.lock]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l concurrency -d 'Jobs polled at once [default: 8]' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l max-age -d 'Give up on a job older than this, e.g. 24h (beats max_age)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l submit-grace -d 'Re-send a pending submission older than this, e.g. 2m (beats submit_grace)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l metrics-file -d 'Write Prometheus textfile metrics here after the run (beats metrics_file)' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -l timestamps -d 'Begin every line on stdout and stderr with the time (RFC 3339, UTC), for a log file a person reads later'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand reap" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -l json -d 'Print the service\'s status object as JSON'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand get" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -l wait -d 'Wait until the job finishes (at most DURATION, default 10m)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -l json -d 'Print the service\'s result object as JSON'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand result" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -l project -d 'Only this project (repeatable) [default: the config\'s projects]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -l json -d 'Print JSON for scripts'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand status" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -l json -d 'Print the service\'s answer as JSON'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand cancel" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand requeue" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -l project -d 'Only this project (repeatable) [default: the config\'s projects]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -l offline -d 'Skip the checks that need the network'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l project -d 'Only jobs of this project (repeatable) [default: all in the ledger]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l since -d 'From: a duration back from now (7d, 12h), a UTC date or an RFC 3339 time [default: 30d]' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l until -d 'Until (a date means the end of that day) [default: now]' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l by -d 'What a row is: one provider, project, model, UTC day, or fleet host' -r -f -a "provider\t''
project\t''
model\t''
day\t''
host\t''"
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l json -d 'Print JSON for scripts'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -l csv -d 'Print CSV: a header line, the rows, the total last'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand report" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -f -a "rebuild" -d 'Rebuild the ledger from the done/ and failed/ records'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and not __fish_seen_subcommand_from rebuild help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -l project -d 'Only this project\'s entries (repeatable) [default: the config\'s projects]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from rebuild" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from help" -f -a "rebuild" -d 'Rebuild the ledger from the done/ and failed/ records'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand ledger; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -f -a "push" -d 'Push this host\'s journal to the fleet\'s database now (what reap does at its end)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and not __fish_seen_subcommand_from push help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -l config -d 'Config file [default: $XDG_CONFIG_HOME/ccl-delegate/config.yaml]' -r -F
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -l api-url -d 'Base URL of the secutools job service (beats SECUTOOLS_URL and api_url)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -l http-timeout -d 'Timeout of one HTTP request, e.g. 30s (beats http_timeout)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -l retries -d 'Extra attempts after a transient HTTP failure (beats retries)' -r
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -s v -l verbose -d 'Say more on stderr (repeat for more)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -s q -l quiet -d 'Say only errors on stderr'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -s h -l help -d 'Print help'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from push" -s V -l version -d 'Print version'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "push" -d 'Push this host\'s journal to the fleet\'s database now (what reap does at its end)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "init" -d 'Create a project\'s queue: DIR/.agent-queue/{inbox,done,failed}'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "decide" -d 'Print where a task would run (pure: no network, no writes)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "submit" -d 'Hand an inbox task to secutools and mark it delegated'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "reap" -d 'Bring finished jobs back into done/ and failed/ (run from cron)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "get" -d 'Show a job\'s status'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "result" -d 'Print a completed job\'s response'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "status" -d 'Show delegated tasks in flight and totals of done and failed tasks'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "cancel" -d 'Ask the service to cancel a job'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "requeue" -d 'Put a failed task back into the inbox'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "doctor" -d 'Check the configuration, the key, the service and the queues'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "report" -d 'Jobs, failures, cost and turnaround from the ledger, and the budgets'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "ledger" -d 'Maintain the host\'s ledger of finished jobs'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "fleet" -d 'Share this host\'s books with the fleet\'s database (config `fleet`)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and not __fish_seen_subcommand_from init decide submit reap get result status cancel requeue doctor report ledger fleet help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and __fish_seen_subcommand_from ledger" -f -a "rebuild" -d 'Rebuild the ledger from the done/ and failed/ records'
complete -c ccl-delegate -n "__fish_ccl_delegate_using_subcommand help; and __fish_seen_subcommand_from fleet" -f -a "push" -d 'Push this host\'s journal to the fleet\'s database now (what reap does at its end)'
