// Through a splitting endpoint: setReadOnly(true) with autocommit off (pgjdbc sends BEGIN READ ONLY) must reach
// a replica, and a read-write transaction the writer. Prints "replica writer" when both are where they belong.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.Statement;

public class JdbcReadOnly {
    static boolean inRecovery(Connection conn) throws Exception {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT pg_is_in_recovery()")) {
            rs.next();
            return rs.getBoolean(1);
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection conn = DriverManager.getConnection(args[0], "postgres", System.getenv("PGPASSWORD"))) {
            conn.setAutoCommit(false);
            conn.setReadOnly(true);
            String first = inRecovery(conn) ? "replica" : "writer";
            conn.commit();
            conn.setReadOnly(false);
            String second = inRecovery(conn) ? "replica" : "writer";
            conn.commit();
            System.out.println(first + " " + second);
        }
    }
}
