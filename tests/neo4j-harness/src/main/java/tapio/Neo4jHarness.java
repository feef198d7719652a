package tapio;

import java.io.IOException;
import java.io.InputStream;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.harness.Neo4j;
import org.neo4j.harness.Neo4jBuilders;
import org.neo4j.io.ByteUnit;

/**
 * Starts a real Neo4j (the in-process test harness) for Tapio's tests and benchmarks.
 *
 * <p>Bolt listens on a free loopback port; authentication is on, and the user {@code neo4j}
 * gets the password given as the first argument (default {@code tapio-test-password}). Once the
 * server accepts connections, one line {@code TAPIO_NEO4J_BOLT=bolt://127.0.0.1:PORT} goes to
 * standard output. The server stops when standard input closes (the parent test process exited
 * or closed the pipe) or on SIGTERM/SIGINT; its store is a temporary directory deleted on stop.
 */
public final class Neo4jHarness {
    private Neo4jHarness() {}

    public static void main(String[] args) throws IOException {
        String password = args.length > 0 ? args[0] : "tapio-test-password";
        Neo4j neo4j = Neo4jBuilders.newInProcessBuilder()
                .withDisabledServer()
                .withConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", 0))
                .withConfig(GraphDatabaseSettings.auth_enabled, true)
                .withConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(128))
                .build();
        AtomicBoolean stopped = new AtomicBoolean(false);
        Runnable stop = () -> {
            if (stopped.compareAndSet(false, true)) {
                neo4j.close();
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(stop, "neo4j-harness-stop"));
        neo4j.databaseManagementService()
                .database("system")
                .executeTransactionally(
                        "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED",
                        Map.of("password", password));
        System.out.println("TAPIO_NEO4J_BOLT=" + neo4j.boltURI());
        System.out.flush();
        InputStream in = System.in;
        byte[] buffer = new byte[256];
        while (in.read(buffer) != -1) {
            // Nothing to read: the parent only closes the pipe.
        }
        stop.run();
        System.exit(0);
    }
}
